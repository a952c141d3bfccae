"""Answer extraction and checking: the one implementation used by rewards, metrics and evaluation.

Numbers are compared exactly (as fractions) first; anything else goes to math-verify for symbolic equivalence. The
symbolic check runs in a helper process with its own timeout, because math-verify's timeout uses `signal.alarm`
(main thread only) and a pathological expression (say 9^{9^{9^9}}) must not hang a rollout worker thread.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

SOLUTION_RE = re.compile(r"<solution>(.*?)</solution>", re.DOTALL | re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*(.+)", re.IGNORECASE)
_ANSWER_COLON_RE = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])[-+](?=[\d.\\]))?"  # a sign, but not a binary minus as in "10-3"
    r"(?:\\[dt]?frac\{\s*\d+(?:\.\d+)?\s*\}\{\s*\d+(?:\.\d+)?\s*\}"
    r"|(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"
    r"|\.\d+)"
)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_LATEX_FRACTION_RE = re.compile(r"([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BARE_MAX_CHARS = 60
DEFAULT_TIMEOUT_S = 5.0


def _last_boxed(text: str) -> str | None:
    """Content of the last non-empty `\\boxed{...}` (nested braces matched), or of `\\boxed x`."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth = 0
            for end in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    content = text[start + 1 : end].strip()
                    if content:
                        return content
                    break
        else:
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                return token.group(0)
    return None


def _clean(answer: str) -> str:
    """Strip whitespace, markdown bold, math delimiters and a final period."""
    previous = None
    while previous != answer:
        previous = answer
        answer = answer.strip().strip("*").strip()
        for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
                answer = answer[len(left) : len(answer) - len(right)]
        if answer.endswith(".") and not answer.endswith(".."):
            answer = answer[:-1]
    return answer


def _is_bare(answer: str) -> bool:
    """A short expression rather than prose: no word of two or more letters outside LaTeX commands and \\text{}."""
    if not answer or len(answer) > _BARE_MAX_CHARS or "\n" in answer:
        return False
    without_latex = re.sub(r"\\[a-zA-Z]+", "", re.sub(r"\\text\{[^{}]*\}", "", answer))
    return re.search(r"[A-Za-z]{2,}", without_latex) is None


def _last_number(text: str) -> str | None:
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def _answer_phrase(text: str) -> str | None:
    """X from the last "answer is X" (else the last "answer: X"), cut at the sentence end."""
    for pattern in (_ANSWER_IS_RE, _ANSWER_COLON_RE):
        matches = list(pattern.finditer(text))
        if not matches:
            continue
        phrase = matches[-1].group(1)
        boxed = _last_boxed(phrase)
        if boxed is not None:
            return boxed
        phrase = _clean(_SENTENCE_END_RE.split(phrase, maxsplit=1)[0])
        if _is_bare(phrase):
            return phrase
        numbers = _NUMBER_RE.findall(phrase)
        if numbers:
            return numbers[0]
    return None


def _answer_in_solution(block: str) -> str | None:
    for strategy in (_last_boxed, _answer_phrase):
        answer = strategy(block)
        if answer is not None:
            return _clean(answer)
    cleaned = _clean(block)
    if _is_bare(cleaned):
        return cleaned
    number = _last_number(block)
    if number is not None:
        return number
    return cleaned if cleaned and len(cleaned) <= _BARE_MAX_CHARS and "\n" not in cleaned else None


def extract_answer(text: str) -> str | None:
    """The final answer in a response, or None.

    Order: the last closed `<solution>` block (inside it: \\boxed, "answer is X", "answer: X", the whole block when it
    is a bare expression, the last number); else the last `\\boxed{...}`; else "answer is X" / "answer: X"; else the
    last number (sign, decimals, thousands separators, simple fractions).
    """
    if not text:
        return None
    blocks = SOLUTION_RE.findall(text)
    if blocks:
        answer = _answer_in_solution(blocks[-1])
        if answer:
            return answer
    for strategy in (_last_boxed, _answer_phrase, _last_number):
        answer = strategy(text)
        if answer:
            return _clean(answer)
    return None


def normalize_ground_truth(ground_truth: str) -> str:
    """The bare answer of a reference: accepts plain text, `\\boxed{...}` and GSM8K's `... #### 42`."""
    answer = ground_truth.strip()
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    boxed = _last_boxed(answer)
    return _clean(boxed if boxed is not None else answer)


def _as_number(answer: str) -> Fraction | None:
    """The exact value of a plain number ("1,000", "$18.00", "+7", "3/4", "\\frac{3}{4}", "50%"), else None."""
    text = re.sub(r"\\[,!;]|\\?\$|\\%|%|\s", "", answer)
    text = text.removeprefix("+")
    try:
        fraction = _LATEX_FRACTION_RE.fullmatch(text)
        if fraction:
            value = Fraction(fraction.group(2)) / Fraction(fraction.group(3))
            return -value if fraction.group(1) == "-" else value
        if _THOUSANDS_RE.fullmatch(text):
            text = text.replace(",", "")
        if "," in text or not re.fullmatch(r"[-+]?[\d.]+(?:e[-+]?\d+)?(?:/[\d.]+)?", text, re.IGNORECASE):
            return None
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(pred: str | None, ground_truth: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether an extracted answer equals the reference.

    Plain numbers are compared exactly (no rounding: "0.33" != "1/3"); otherwise a case-insensitive string match,
    then math-verify's symbolic equivalence, bounded by `timeout` seconds (a timeout counts as a mismatch). An empty
    prediction or reference never matches.
    """
    if pred is None:
        return False
    gold, guess = normalize_ground_truth(ground_truth), normalize_ground_truth(pred)
    if not gold or not guess:
        return False
    gold_number, guess_number = _as_number(gold), _as_number(guess)
    if gold_number is not None and guess_number is not None:
        return gold_number == guess_number
    if gold.casefold() == guess.casefold():
        return True
    return _SYMBOLIC.check(_as_latex(guess), _as_latex(gold), timeout)


def is_correct(response: str, ground_truth: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the answer extracted from `response` matches `ground_truth`."""
    return answers_match(extract_answer(response), ground_truth, timeout)


def has_parseable_answer(response: str) -> bool:
    return extract_answer(response) is not None


def _as_latex(answer: str) -> str:
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def _symbolic_equal(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(
            verify(parse(gold, parsing_timeout=None), parse(pred, parsing_timeout=None), timeout_seconds=None)
        )
    except Exception:
        return False


def _serve() -> None:
    """Helper-process loop (`python -m rcl.answers`): JSON lines [pred, gold] in, true/false out."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to stderr, never into the protocol
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (imported before "ready", so timeouts only cover verification)

    print("ready", file=protocol, flush=True)
    for line in sys.stdin:
        pred, gold = json.loads(line)
        print(json.dumps(_symbolic_equal(pred, gold)), file=protocol, flush=True)


class _SymbolicChecker:
    """math-verify in a long-lived helper process that is killed and replaced when a check overruns its timeout.

    A plain subprocess rather than multiprocessing: spawn would re-import the user's main script in the helper.
    """

    startup_timeout_s = 120.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner_pid: int | None = None

    def check(self, pred: str, gold: str, timeout: float) -> bool:
        with self._lock:
            process = self._ready_process()
            try:
                process.stdin.write((json.dumps([pred, gold]) + "\n").encode())
                process.stdin.flush()
                reply = _read_line(process, timeout)
            except OSError:  # the helper died (e.g. out of memory)
                reply = None
            if reply is None:
                self._stop()
                return False
            return reply == "true"

    def _ready_process(self) -> subprocess.Popen:
        if self._owner_pid != os.getpid():  # forked: the parent's helper is not ours to use
            self._process = None
        if self._process is None or self._process.poll() is not None:
            package_root = str(Path(__file__).resolve().parents[1])
            python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": python_path}
            process = subprocess.Popen(
                [sys.executable, "-m", "rcl.answers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
            )
            if _read_line(process, self.startup_timeout_s) != "ready":
                process.kill()
                raise RuntimeError("the math-verify helper process (python -m rcl.answers) did not start")
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


_SYMBOLIC = _SymbolicChecker()
atexit.register(_SYMBOLIC.close)

if __name__ == "__main__":
    _serve()
