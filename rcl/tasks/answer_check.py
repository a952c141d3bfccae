"""Whether an extracted answer equals the reference (math and GSM8K tasks).

Both sides are read whole, in this order:

1. References are unwrapped first: GSM8K's `… #### 42`, a last `\\boxed{}`, math delimiters.
2. Both sides are canonicalised: `\\dfrac`/`\\tfrac` to `\\frac`, `\\left`/`\\right` and LaTeX spacing dropped,
   `{,}` to `,`, a lone `\\text{…}` unwrapped. Unless strict: a leading `x =` and trailing units (`\\text{ cm}`,
   `\\text{ cm}^2`, plain unit words after a number, a length unit squared or cubed such as `cm^2`, `^\\circ`) are
   dropped.
3. Plain numbers are compared exactly, as fractions (no rounding: 0.33 is not 1/3; 18.00 is 18):
   - signs: `-15`, `-$15`, `$-15`, `−15` and `+7` are read with their sign;
   - currency: a `$`, `\\$`, `€`, `£` prefix is dropped;
   - thousands separators: `1,000`, `1\\,000`, `1 000` and `1{,}000` are 1000, but only with groups of exactly three
     digits and no space after the comma;
   - lists: `32, 349` (a space after a comma) or `1,2` are lists, never one number, and a list only equals a list
     (same elements, in any order);
   - percent: `50%` equals 50 and (unless strict) 0.5;
   - decimals and fractions: `0.75`, `3/4`, `\\frac{3}{4}` and `\\frac34` are one value.
4. Then a case-insensitive comparison of the canonical strings (`12:00`, `[0,1)`, `(B)` = `B`, text answers); a
   choice given with its option's value (`(D) 12`) equals the letter D.
5. Anything else goes to math-verify for symbolic equivalence (intervals, sets, radicals, expressions; unless strict,
   an inequality equals its interval: `x > 3` is `(3, \\infty)`).

The symbolic check runs in a helper process with its own timeout, because math-verify's timeout uses `signal.alarm`
(main thread only) and a pathological expression (9^{9^{9^9}}) must not hang a rollout worker thread. A check that
overruns its timeout, a helper that dies, math-verify raising, or a reference that is malformed or that it cannot parse
is reported as an error (`Verdict.error`), never as a plain mismatch. In strict mode math-verify only sees bare
expressions, and an equation only equals an equation.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from rcl.tasks.answer_extraction import clean, is_bare, last_boxed

DEFAULT_TIMEOUT_S = 5.0
_UNIT_WORDS = r"[A-Za-z][A-Za-z.\-]*(?:\s+[A-Za-z][A-Za-z.\-]*){0,3}"
_UNIT_POWER = r"\^\s*\{?\s*[23]\s*\}?"
# Only known lengths take a power: "12 m^2" is square metres, but "12 x^2" is an expression.
_POWERED_UNITS = rf"(?:square\s+|cubic\s+)?(?:mm|cm|dm|m|km|in|ft|yd|mi|units?)\s*{_UNIT_POWER}"
_NUMBER_CORE = re.compile(
    r"(?P<sign1>[-+])?(?P<cur>\\?\$|€|£|¥)?(?P<sign2>[-+])?"
    r"(?P<int>\d{1,3}(?:(?P<sep>,|\\,|\s|\{,\}|\\ )\d{3})(?:(?P=sep)\d{3})*|\d*)"
    r"(?P<frac>\.\d+)?(?:[eE](?P<exp>[-+]?\d+))?"
    r"(?P<pct>\s*(?:\\%|%|\s+percent))?"
)
_SLASH_FRACTION = re.compile(r"(?P<sign>[-+]?)(?P<num>\d+(?:\.\d+)?)/(?P<den>\d+(?:\.\d+)?)")
_LATEX_FRACTION = re.compile(  # \frac{3}{4} or \frac34
    r"(?P<sign>[-+]?)\\frac"
    r"(?:\{\s*(?P<num>\d+(?:\.\d+)?)\s*\}|(?P<num1>\d))(?:\{\s*(?P<den>\d+(?:\.\d+)?)\s*\}|(?P<den1>\d))"
)
_ASSIGNMENT = re.compile(r"^(?:[A-Za-z](?:_\{?\w+\}?)?|\\[a-zA-Z]+)\s*=\s*(?P<rhs>[^=]+)$")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?$")
_CHOICE_WITH_VALUE = re.compile(r"^(?:\\text(?:bf)?\{\s*)?\(([A-Ea-e])\)")  # "(D) 12", "\textbf{(D) } 12"
# Numbers separated by spaces only ("8 5", "5 5 85"): not one number, and math-verify would read them as a sum.
_DIGIT_RUN = re.compile(r"[-+]?\d+(?:\.\d+)?(?:\s+[-+]?\d+(?:\.\d+)?)+")


@dataclass(frozen=True)
class Verdict:
    equal: bool
    how: str
    """What decided: number, list, string, symbolic, or empty (an empty side never matches)."""
    error: str | None = None
    """Set when the check could not be made (timeout, helper failure, math-verify error, unparseable reference)."""
    timed_out: bool = False


@dataclass(frozen=True)
class Number:
    value: Fraction
    percent: bool = False


def normalize_gold(ground_truth: str) -> str:
    """The bare answer of a reference: plain text, `\\boxed{...}`, GSM8K's `... #### 42`, or `$...$`."""
    answer = ground_truth.strip()
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    boxed = last_boxed(answer)
    return clean(boxed if boxed is not None else answer)


def canonical(answer: str, strict: bool = False) -> str:
    """The comparable form of one answer (see the module docstring, step 2)."""
    text = clean(answer)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\left\b|\\right\b|\\!|\\;|\\quad|\\displaystyle", "", text)
    text = text.replace("{,}", ",").replace("−", "-").replace("\\%", "%")
    text = re.sub(r"^\\(?:text|mbox|textbf|mathrm)\{([^{}]*)\}$", r"\1", text.strip())
    if not strict:
        text = re.sub(r"\s*\^\s*\{?\\circ\}?|°", "", text)
        text = re.sub(rf"\s*\\(?:text|mbox|mathrm)\{{\s*[A-Za-z][^{{}}]*\}}(?:{_UNIT_POWER})?\s*$", "", text)
        assignment = _ASSIGNMENT.match(text.strip())
        if assignment:
            text = assignment.group("rhs")
        unit = re.fullmatch(rf"(?P<head>.*?\d%?)\s+(?:{_UNIT_WORDS}|{_POWERED_UNITS})", text.strip())
        if unit and parse_number(unit.group("head")) is not None:
            text = unit.group("head")
    return clean(text)


def parse_number(text: str) -> Number | None:
    """The exact value of a plain number (module docstring, step 3), else None."""
    text = text.strip()
    for pattern in (_LATEX_FRACTION, _SLASH_FRACTION):
        match = pattern.fullmatch(text)
        if match:
            groups = match.groupdict()
            num = Fraction(groups.get("num") or groups.get("num1"))
            den = Fraction(groups.get("den") or groups.get("den1"))
            if den == 0:
                return None
            return Number(-num / den if match.group("sign") == "-" else num / den)
    match = _NUMBER_CORE.fullmatch(text)
    if not match or not (match.group("int") or match.group("frac")):
        return None
    if match.group("sign1") and match.group("sign2"):
        return None
    digits = re.sub(r"\D", "", match.group("int")) + (match.group("frac") or "")
    value = Fraction(digits or "0") * Fraction(10) ** int(match.group("exp") or 0)
    if "-" in (match.group("sign1"), match.group("sign2")):
        value = -value
    return Number(value, bool(match.group("pct")))


def split_list(text: str) -> list[str] | None:
    """The items of a top-level comma list (commas inside brackets do not count; a thousands-separated number is not a
    list), or None."""
    if parse_number(text) is not None:
        return None
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0 and text[max(0, i - 1) : i] != "\\":
            items.append(text[start:i])
            start = i + 1
    if not items:
        return None
    items.append(text[start:])
    return [item.strip() for item in items]


def numbers_equal(pred: Number, gold: Number, strict: bool) -> bool:
    if pred.value == gold.value:
        return True
    if strict or pred.percent == gold.percent:
        return False
    percent, plain = (pred, gold) if pred.percent else (gold, pred)
    return percent.value / 100 == plain.value


def _fold(text: str) -> str:
    choice = _CHOICE.match(text)
    if choice:
        return choice.group(1).casefold()
    text = re.sub(r"\\,|\\ |~", " ", text)
    return re.sub(r"(?<!\w)\s+|\s+(?!\w)", "", text).strip().casefold()


def compare(pred: str | None, gold: str, strict: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Whether the extracted answer `pred` equals the reference `gold` (module docstring)."""
    gold_text = normalize_gold(gold)
    if pred is None or not clean(pred) or not gold_text:
        return Verdict(False, "empty")
    if not balanced(gold_text):
        return Verdict(False, "reference", f"the reference {gold_text!r} has unbalanced braces")
    guess, truth = canonical(pred, strict), canonical(gold_text, strict)
    guess_number, truth_number = parse_number(guess), parse_number(truth)
    if guess_number is not None and truth_number is not None:
        return Verdict(numbers_equal(guess_number, truth_number, strict), "number")
    guess_items, truth_items = split_list(guess), split_list(truth)
    if (guess_items is None) != (truth_items is None) and (guess_number or truth_number):
        return Verdict(False, "list")  # a list never equals one number: "32, 349" is not 32349
    if guess_items and truth_items:
        numbers = [[parse_number(canonical(i, strict)) for i in items] for items in (guess_items, truth_items)]
        if all(n is not None for side in numbers for n in side):
            return Verdict(_same_multiset(*numbers, strict), "list")
    if _fold(guess) == _fold(truth):
        return Verdict(True, "string")
    choice = _CHOICE_WITH_VALUE.match(guess)
    if choice and _CHOICE.match(truth):  # a multiple-choice letter with its option's value: the letter decides
        return Verdict(choice.group(1).casefold() == _fold(truth), "string")
    if _DIGIT_RUN.fullmatch(guess) or _DIGIT_RUN.fullmatch(truth):
        return Verdict(False, "number")
    if strict and (("=" in guess) != ("=" in truth) or not is_bare(guess)):
        return Verdict(False, "strict")  # math-verify would read an equation's right side, or a number in words
    return _SYMBOLIC.check(guess, truth, timeout, relations=not strict)


def balanced(text: str) -> bool:
    depth = 0
    for char in text.replace("\\{", "").replace("\\}", ""):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _same_multiset(pred: list[Number], gold: list[Number], strict: bool) -> bool:
    remaining = list(gold)
    for item in pred:
        match = next((g for g in remaining if numbers_equal(item, g, strict)), None)
        if match is None:
            return False
        remaining.remove(match)
    return not remaining


class SymbolicChecker:
    """math-verify in a long-lived helper process that is killed and replaced when a check overruns its timeout.

    A plain subprocess rather than multiprocessing: spawn would re-import the user's main script in the helper.
    """

    startup_timeout_s = 120.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner_pid: int | None = None

    def check(self, pred: str, gold: str, timeout: float, relations: bool = False) -> Verdict:
        """math-verify's verdict; `relations` lets an inequality equal an interval (x > 3 and (3, \\infty))."""
        with self._lock:
            process = self._ready_process()
            try:
                process.stdin.write((json.dumps([pred, gold, relations]) + "\n").encode())
                process.stdin.flush()
                reply = _read_line(process, timeout)
            except OSError:  # the helper died (e.g. out of memory)
                reply = None
            if reply is None:
                alive = process.poll() is None
                self._stop()
                if alive:
                    return Verdict(False, "symbolic", f"math-verify timed out after {timeout:g} s", timed_out=True)
                return Verdict(False, "symbolic", "the math-verify helper process died")
        answer = json.loads(reply)
        if "error" in answer:
            return Verdict(False, "symbolic", answer["error"])
        return Verdict(bool(answer["equal"]), "symbolic")

    def _ready_process(self) -> subprocess.Popen:
        if self._owner_pid != os.getpid():  # forked: the parent's helper is not ours to use
            self._process = None
        if self._process is None or self._process.poll() is not None:
            package_root = str(Path(__file__).resolve().parents[2])
            python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": python_path}
            process = subprocess.Popen(
                [sys.executable, "-m", "rcl.tasks.symbolic_helper"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                bufsize=0, env=env,
            )
            if _read_line(process, self.startup_timeout_s) != "ready":
                process.kill()
                raise RuntimeError("the math-verify helper process (python -m rcl.tasks.symbolic_helper) did not start")
            self._process, self._owner_pid = process, os.getpid()
        return self._process

    def close(self) -> None:
        """Stop the helper (it also exits by itself when this process ends and its stdin closes)."""
        with self._lock:
            if self._owner_pid == os.getpid():
                self._stop()

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
            for stream in (self._process.stdin, self._process.stdout):
                stream.close()
        self._process = None


def _read_line(process: subprocess.Popen, timeout: float) -> str | None:
    """One reply line from the helper, or None when none arrives within `timeout` seconds (POSIX pipes)."""
    line = b""
    while not line.endswith(b"\n"):
        readable, _, _ = select.select([process.stdout], [], [], timeout)
        if not readable:
            return None
        byte = process.stdout.read(1)
        if not byte:
            return None
        line += byte
    return line.decode().strip()


_SYMBOLIC = SymbolicChecker()
atexit.register(_SYMBOLIC.close)
