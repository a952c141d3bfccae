"""The sandbox's settings: limits with their defaults, isolation, and the languages it can run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["pass", "wrong_answer", "timeout", "memory", "crash", "infra_error"]
OUTCOMES: tuple[str, ...] = ("pass", "wrong_answer", "timeout", "memory", "crash", "infra_error")


@dataclass
class LanguageSpec:
    """How to run (and optionally compile) a program in one language. Placeholders in `run` and `compile`: {file} is
    the source file, {dir} the folder holding it (also where a compile step writes), {python} the sandbox's Python."""

    run: list[str]
    """Command that runs the program, e.g. ["q", "{file}"] or ["{dir}/main"]. The first word is looked up on the
    host's PATH when the sandbox starts."""
    filename: str = "main"
    """Name of the source file, e.g. "main.q"."""
    compile: list[str] | None = None
    """Command run once before the tests (in the sandbox, under the same limits), e.g.
    ["gcc", "-O2", "-o", "{dir}/main", "{file}"]. A failed compile fails every test as a crash."""
    fence_tags: list[str] = field(default_factory=list)
    """Code-fence tags that mark this language in a completion (```q); the language's name always counts."""


PYTHON = LanguageSpec(run=["{python}", "-I", "{file}"], filename="main.py", fence_tags=["python", "py", "python3"])


@dataclass
class SandboxConfig:
    """Limits and isolation for running model-written programs. Each limit applies to one run (one test case, or one
    assert-style test program)."""

    timeout_s: float = 10.0
    """Wall-clock limit per run; at the limit the run's whole process tree is killed. CPU time is limited to
    ceil(timeout_s) + 1 seconds (RLIMIT_CPU)."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) per process."""
    max_processes: int = 32
    """Processes and threads the run's user may have (RLIMIT_NPROC)."""
    max_file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE)."""
    max_open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    max_output_kb: int = 1024
    """Cap on stdout and on stderr, each. A program that writes more to stdout is killed (outcome crash); stderr past
    the cap is drained and dropped."""
    work_dir_mb: int = 64
    """Size of the program's writable work folder (a tmpfs under bubblewrap; only max_file_mb per file without it)."""
    workers: int = 4
    """Runs at once (the bounded worker pool shared by every caller of this sandbox)."""
    isolation: Literal["bwrap", "rlimits"] = "bwrap"
    """bwrap: bubblewrap namespaces (no network, read-only filesystem, private /tmp, own PID space) plus rlimits.
    rlimits: rlimits, a fresh session and an unprivileged user only. When bubblewrap is missing or does not work,
    "bwrap" falls back to "rlimits" with a loud warning, unless require_isolation is set."""
    require_isolation: bool = False
    """Refuse to run (raise SandboxUnavailable) instead of falling back to rlimits only."""
    python: str = ""
    """Python that runs Python programs and the in-sandbox helpers; empty = the interpreter running rcl. Under rlimits
    only, as root, it must be executable by an unprivileged user (e.g. /usr/bin/python3)."""
    languages: dict[str, LanguageSpec] = field(default_factory=dict)
    """Languages besides the built-in "python", by name (e.g. {"q": {"run": ["q", "{file}"], "filename": "main.q"}})."""
    uid_base: int = 61000
    """As root, each concurrent run gets its own unprivileged uid from uid_base on (so RLIMIT_NPROC binds and every
    process of the run can be found and killed)."""
    infra_retries: int = 2
    """Retries of a run that failed for infrastructure reasons (the sandbox did not start, the judge failed)."""
    hide_paths: list[str] = field(default_factory=lambda: ["/root", "/home", "/tmp", "/var/tmp", "/run"])
    """Under bubblewrap these are replaced by empty tmpfs folders (the interpreters are bound back in)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the program (the environment is otherwise scrubbed)."""

    def __post_init__(self):
        if self.require_isolation and self.isolation != "bwrap":
            raise ValueError("require_isolation needs isolation: bwrap")
        if self.timeout_s <= 0 or self.workers < 1:
            raise ValueError("timeout_s must be > 0 and workers >= 1")
        self.languages = {
            name: spec if isinstance(spec, LanguageSpec) else LanguageSpec(**spec)
            for name, spec in self.languages.items()
        }
        if "python" in self.languages:
            raise ValueError('"python" is built in; name another language')

    @property
    def cpu_s(self) -> int:
        return math.ceil(self.timeout_s) + 1

    def language(self, name: str) -> LanguageSpec:
        if name == "python":
            return PYTHON
        if name not in self.languages:
            raise ValueError(f"unknown language {name!r}; configured: python, {', '.join(self.languages)}")
        return self.languages[name]
