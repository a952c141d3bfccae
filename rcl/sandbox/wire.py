"""The value format between the judge (trusted) and the runner (the model's program): plain data only.

Standard library only: this file is copied next to the runner inside the sandbox.

Only builtin values cross: None, bool, int, float (nan/inf included), complex, str, bytes, and list, tuple, set,
frozenset and dict of those, and `decode` only ever builds exact builtins. So whatever the program sends, the judge
compares genuine builtins: an object whose `__eq__` always answers True cannot reach the test code.

`encode` (in the runner) sends an instance of a builtin's subclass as its base value, read through the base type's own
methods so that no override runs: a `Counter`, `defaultdict` or namedtuple arrives as the dict or tuple that the
standard HumanEval harness would compare, and an `int` subclass whose `__eq__` always answers True as its plain int.
A numpy scalar (`np.int64(3)`, which equals 3 there too) is sent as its `.item()`. Any other object is refused.

One exception, one way: a `Handle` names an object the program built when the test called one of its classes
(`Pair(5, 24)`), kept in the runner. The judge sends handles back as arguments (`{"h": n}`, resolved only by the
runner's `decode(..., handles)`); it never receives one inside a value, so a program cannot pass an object off as data.
"""

from __future__ import annotations

import base64
import json
import math

MAX_DEPTH = 100


class Unencodable(TypeError):
    """A value that is not plain builtin data."""


class Handle:
    """The judge's stand-in for an object that stays in the program (see the module docstring). It equals only
    itself: comparing two of the program's objects would run the program's `__eq__`."""

    __slots__ = ("index", "kind")

    def __init__(self, index: int, kind: str):
        self.index, self.kind = index, kind

    def __repr__(self) -> str:
        return f"<{self.kind} object in the sandbox>"


# The base types' own methods, called on the subclass instance: an override in the subclass is never consulted.
_AS_BASE = (
    (int, int.__int__),
    (float, float.__float__),
    (complex, lambda v: complex(complex.real.__get__(v), complex.imag.__get__(v))),
    (str, str.__str__),
    (bytes, lambda v: bytes(memoryview(v))),
    (list, lambda v: list(list.__iter__(v))),
    (tuple, lambda v: tuple(tuple.__iter__(v))),
    (frozenset, lambda v: frozenset(frozenset.__iter__(v))),
    (set, lambda v: set(set.__iter__(v))),
    (dict, lambda v: dict(dict.items(v))),
)
_EXACT = {int, float, complex, str, bytes, list, tuple, set, frozenset, dict}


def _plain(value):
    """The builtin value behind a builtin's subclass or a numpy scalar; None when there is none."""
    kind = type(value)  # not isinstance: a `__class__` property can claim any class
    for base, as_base in _AS_BASE:
        if issubclass(kind, base):
            return as_base(value)
    if kind.__module__ == "numpy" and getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return value.item()
    return None


def encode(value, depth: int = 0):
    if depth > MAX_DEPTH:
        raise Unencodable("value nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is Handle:
        return {"h": value.index}
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
    try:
        plain = _plain(value)
    except Exception as error:  # the program's own code ran (a numpy look-alike's `item`)
        raise Unencodable(f"a {kind.__module__}.{kind.__qualname__} could not be read as plain data: {error}") from None
    if plain is not None and type(plain) in _EXACT | {bool}:
        return encode(plain, depth + 1)
    raise Unencodable(f"a {kind.__module__}.{kind.__qualname__} is not plain data")


def _float(text) -> float:
    if type(text) is not str:
        raise ValueError("bad float")
    return float(text)


def decode(data, depth: int = 0, handles: list | None = None):
    """The value `encode` sent; `handles` (the runner's objects) resolves `{"h": n}`, which is refused without it."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if kind is list:
        return [decode(item, depth + 1, handles) for item in data]
    if kind is dict and len(data) == 1:
        (tag, body), = data.items()
        if tag == "h" and handles is not None and type(body) is int and 0 <= body < len(handles):
            return handles[body]
        if tag == "i" and type(body) is str:
            return int(body)
        if tag == "f":
            return _float(body)
        if tag == "c" and type(body) is list and len(body) == 2:
            return complex(_float(body[0]), _float(body[1]))
        if tag == "b" and type(body) is str:
            return base64.b64decode(body, validate=True)
        if tag in ("t", "s", "fs") and type(body) is list:
            items = [decode(item, depth + 1, handles) for item in body]
            return {"t": tuple, "s": set, "fs": frozenset}[tag](items)
        if tag == "d" and type(body) is list:
            pairs = [decode(pair, depth + 1, handles) for pair in body]
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
