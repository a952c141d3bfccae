"""Outside the sandbox: run assert-style test code against the model's program, which runs in the sandbox.

Standard library only; run by the host as `python -I judge.py`, with a JSON spec on stdin:
{"test", "entry_point", "remote_names", "timeout_s", "nonce", "to_runner", "from_runner"} (the last two are the
numbers of the inherited pipe ends to the runner).

The test code (`check(candidate)`, HumanEval's convention) runs here, in a process the program cannot reach. Every
name the test code uses but does not define (`candidate`, and helpers such as HumanEval's `poly`) is a proxy that
calls into the program; only plain data comes back (wire.py), or a handle for an object the test built with one of
the program's classes, which only the program can use. So exiting early, redefining `check` or `assert`, or
printing fake results does nothing: the verdict is this process's, written to its own stdout as the last line, tagged
with the run's nonce.
"""

import ast
import builtins
import ctypes
import json
import os
import select
import sys
import time

if __package__:
    from rcl.sandbox import wire
else:  # run as a script (python -I does not put the script's folder on sys.path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire

MAX_REPLY_BYTES = 16 * 1024 * 1024


def _no_ptrace() -> None:
    """Make this process non-dumpable, so a program of the same user cannot read or ptrace it (rlimits-only mode)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


class Stop(BaseException):
    """The run cannot go on; `outcome` says why (timeout, memory, crash). A BaseException, and remembered by the
    channel, so test code that catches `Exception` around a call cannot swallow it."""

    def __init__(self, outcome: str, error: str):
        super().__init__(error)
        self.outcome = outcome
        self.error = error


class HarnessError(BaseException):
    """The test needs something this harness cannot do (an infrastructure error, not the model's failure)."""


class RemoteError(Exception):
    """The program raised an exception that is not a builtin one."""


class Channel:
    def __init__(self, to_runner: int, from_runner: int, deadline: float):
        self.to_runner = to_runner
        self.from_runner = from_runner
        self.deadline = deadline
        self.buffer = b""
        self.stopped: BaseException | None = None
        self.last_raised: Exception | None = None

    def fail(self, error: BaseException) -> BaseException:
        self.stopped = self.stopped or error
        return error

    def send(self, message: dict) -> None:
        if self.stopped is not None:
            raise self.stopped
        data = wire.dumps(message)
        try:
            while data:
                data = data[os.write(self.to_runner, data) :]
        except (BrokenPipeError, OSError):
            raise self.fail(Stop("crash", "the program exited during the tests")) from None

    def receive(self) -> dict:
        if self.stopped is not None:
            raise self.stopped
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self.fail(Stop("timeout", "time limit reached"))
            ready, _, _ = select.select([self.from_runner], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.from_runner, 1 << 20)
            if not chunk:
                raise self.fail(Stop("crash", "the program exited during the tests"))
            self.buffer += chunk
            if len(self.buffer) > MAX_REPLY_BYTES:
                raise self.fail(Stop("crash", "a reply exceeded the size limit"))
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            return wire.loads(line)
        except (ValueError, RecursionError):
            raise self.fail(Stop("crash", "the program broke the result channel")) from None


def _remote_exception(kind: str, message: str) -> Exception:
    """The builtin exception the program raised (so `except ValueError` in test code works), else RemoteError."""
    cls = getattr(builtins, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    return RemoteError(f"{kind}: {message}")


class Remote:
    """A function of the program, called across the sandbox boundary."""

    def __init__(self, channel: Channel, name: str):
        self._channel = channel
        self._name = name

    def __call__(self, *args, **kwargs):
        channel = self._channel
        try:
            request = {"call": self._name, "args": wire.encode(list(args)), "kwargs": wire.encode(kwargs)}
        except wire.Unencodable as error:
            raise channel.fail(HarnessError(f"the test passes {self._name} a value the sandbox cannot send: {error}"))
        channel.send(request)
        reply = channel.receive()
        broken = Stop("crash", "the program broke the result channel")
        if "ok" in reply:
            try:
                return wire.decode(reply["ok"])
            except (ValueError, TypeError, RecursionError):
                raise channel.fail(broken) from None
        raised = reply.get("raise")
        if type(raised) is list and len(raised) == 2 and all(type(part) is str for part in raised):
            if raised[0] == "MemoryError":
                raise channel.fail(Stop("memory", "MemoryError"))
            channel.last_raised = _remote_exception(*raised)
            raise channel.last_raised
        handle = reply.get("handle")
        if type(handle) is list and len(handle) == 2 and type(handle[0]) is int and type(handle[1]) is str:
            return wire.Handle(handle[0], handle[1][:100])  # an object of the program's, to pass back to it
        if "unencodable" in reply:
            raise TypeError(f"{self._name} returned something that is not plain data ({reply['unencodable']})")
        if "bad_request" in reply:
            raise channel.fail(HarnessError(f"the runner refused a request: {reply['bad_request']}"))
        raise channel.fail(broken)

    def __repr__(self) -> str:
        return f"<function {self._name} (in the sandbox)>"


def free_names(test: str) -> set[str]:
    """Names the test code reads but never binds, and that are not builtins: they must come from the program."""
    tree = ast.parse(test)
    bound, loaded = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


def judge(spec: dict) -> dict:
    deadline = time.monotonic() + float(spec["timeout_s"])
    channel = Channel(spec["to_runner"], spec["from_runner"], deadline)
    hello = channel.receive()
    if "load_error" in hello:
        kind, message = (list(hello["load_error"]) + ["", ""])[:2]
        outcome = "memory" if kind == "MemoryError" else "crash"
        return {"outcome": outcome, "error": f"the program failed to load: {kind}: {message}"[:2000]}
    if hello != {"ready": True}:
        return {"outcome": "crash", "error": "the program broke the result channel"}
    namespace = {"__name__": "__judge__"}
    for name in spec["remote_names"]:
        namespace[name] = Remote(channel, name)
    try:
        exec(compile(spec["test"], "<test>", "exec"), namespace)
    except Exception as error:
        raise HarnessError(f"the test code failed before check: {type(error).__name__}: {error}") from None
    check = namespace.get("check")
    if not callable(check):
        raise HarnessError("the test code defines no check(candidate)")
    try:
        check(Remote(channel, spec["entry_point"]))
        verdict = {"outcome": "pass", "error": ""}
    except AssertionError as error:
        verdict = {"outcome": "wrong_answer", "error": f"AssertionError: {error}"}
    except Exception as error:
        # The candidate raised (a crash), or returned something the test code could not use (a wrong answer).
        outcome = "crash" if error is channel.last_raised else "wrong_answer"
        verdict = {"outcome": outcome, "error": f"{type(error).__name__}: {error}"}
    if channel.stopped is not None:  # a stop the test code swallowed still decides the run
        raise channel.stopped
    verdict["error"] = verdict["error"][:2000]
    return verdict


def main() -> None:
    _no_ptrace()
    spec = json.loads(sys.stdin.read())
    try:
        verdict = judge(spec)
    except Stop as stop:
        verdict = {"outcome": stop.outcome, "error": stop.error}
    except HarnessError as error:
        verdict = {"outcome": "infra_error", "error": str(error)}
    except BaseException as error:
        verdict = {"outcome": "infra_error", "error": f"judge failed: {type(error).__name__}: {error}"}
    verdict["nonce"] = spec["nonce"]
    sys.stdout.write("\n" + json.dumps(verdict) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
