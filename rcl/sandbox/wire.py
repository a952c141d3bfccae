"""The value format between the judge (trusted) and the runner (the model's program): plain data only.

Standard library only: this file is copied next to the runner inside the sandbox.

Only exact builtin types cross: None, bool, int, float (nan/inf included), complex, str, bytes, and list, tuple, set,
frozenset and dict of those. A subclass, or any other object, is refused by `encode`, and `decode` only ever builds
builtin values. So whatever the program sends, the judge compares genuine builtins: an object whose `__eq__` always
answers True cannot reach the test code.
"""

from __future__ import annotations

import base64
import json
import math

MAX_DEPTH = 100


class Unencodable(TypeError):
    """A value that is not plain builtin data."""


def encode(value, depth: int = 0):
    if depth > MAX_DEPTH:
        raise Unencodable("value nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"i": str(value)} if abs(value) > 2**53 else value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if kind is complex:
        return {"c": [repr(value.real), repr(value.imag)]}
    if kind is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}
    if kind is list:
        return [encode(item, depth + 1) for item in value]
    if kind in (tuple, set, frozenset):
        tag = {tuple: "t", set: "s", frozenset: "fs"}[kind]
        return {tag: [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise Unencodable(f"a {kind.__module__}.{kind.__qualname__} is not plain data")


def _float(text) -> float:
    if type(text) is not str:
        raise ValueError("bad float")
    return float(text)


def decode(data, depth: int = 0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if kind is list:
        return [decode(item, depth + 1) for item in data]
    if kind is dict and len(data) == 1:
        (tag, body), = data.items()
        if tag == "i" and type(body) is str:
            return int(body)
        if tag == "f":
            return _float(body)
        if tag == "c" and type(body) is list and len(body) == 2:
            return complex(_float(body[0]), _float(body[1]))
        if tag == "b" and type(body) is str:
            return base64.b64decode(body, validate=True)
        if tag in ("t", "s", "fs") and type(body) is list:
            items = [decode(item, depth + 1) for item in body]
            return {"t": tuple, "s": set, "fs": frozenset}[tag](items)
        if tag == "d" and type(body) is list:
            pairs = [decode(pair, depth + 1) for pair in body]
            if any(type(pair) is not list or len(pair) != 2 for pair in pairs):
                raise ValueError("bad dict")
            return {key: value for key, value in pairs}
    raise ValueError(f"not a wire value: {str(data)[:80]}")


def dumps(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def loads(line: bytes) -> dict:
    message = json.loads(line)
    if type(message) is not dict:
        raise ValueError("a message is a JSON object")
    return message
