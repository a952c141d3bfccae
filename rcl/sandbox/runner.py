"""Inside the sandbox: load the model's program and answer the judge's calls into it.

Standard library only; run as `python -I runner.py PROGRAM`. Nothing here is trusted: the program runs in this process
and may replace any of it. The judge therefore believes only the plain values that come back (see wire.py), and a
program that exits, hangs or writes garbage simply fails its tests.

Protocol: one JSON line per message. The runner first sends {"ready": true} (or {"load_error": [type, message]});
then each request {"call": name, "args": [...], "kwargs": [[k, v], ...]} gets {"ok": value},
{"raise": [type, message]} or {"unencodable": description}. A call of one of the program's classes whose instance is
not plain data gets {"handle": [index, class name]}: the instance stays here, and the judge may pass it back as an
argument (wire.Handle).
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _here)
import wire  # noqa: E402

while _here in sys.path:  # the program must not import our files by accident
    sys.path.remove(_here)
del sys.modules["wire"]

# The judge's channel is the inherited stdin/stdout; the program gets /dev/null and stderr (so its prints cannot
# corrupt the channel, and the host caps them with the rest of stderr).
_requests = os.fdopen(os.dup(0), "rb", buffering=0)
_replies = os.fdopen(os.dup(1), "wb", buffering=0)
_devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(_devnull, 0)
os.close(_devnull)
os.dup2(2, 1)


def _send(message: dict) -> None:
    _replies.write(wire.dumps(message))


def _describe(error: BaseException) -> list:
    return [type(error).__name__, str(error)[:2000]]


def _serve(namespace: dict) -> None:
    objects: list = []  # what the test built with the program's classes, by handle index
    for line in iter(_requests.readline, b""):
        try:
            request = wire.loads(line)
            function = namespace[request["call"]]
            args = wire.decode(request["args"], handles=objects)
            kwargs = dict(wire.decode(request["kwargs"], handles=objects))
        except Exception as error:  # a malformed request is the judge's bug, reported as such
            _send({"bad_request": _describe(error)})
            continue
        try:
            result = function(*args, **kwargs)
        except BaseException as error:  # SystemExit and KeyboardInterrupt too: the call failed, the server goes on
            _send({"raise": _describe(error)})
            continue
        try:
            reply = {"ok": wire.encode(result)}
        except wire.Unencodable as error:
            if isinstance(function, type) and isinstance(result, function):
                objects.append(result)
                reply = {"handle": [len(objects) - 1, function.__name__]}
            else:
                reply = {"unencodable": str(error)}
        except RecursionError:
            reply = {"unencodable": "value nested too deeply"}
        _send(reply)


def main() -> None:
    path = sys.argv[1]
    sys.argv = [path]
    namespace = {"__name__": "solution", "__file__": path, "__builtins__": __builtins__}
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        exec(compile(source, path, "exec"), namespace)
    except BaseException as error:  # a program that raises (or calls sys.exit) while loading fails to load
        _send({"load_error": _describe(error)})
        return
    _send({"ready": True})
    _serve(namespace)


main()
