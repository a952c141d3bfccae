"""Which part of a model's response is its final answer (math and GSM8K tasks).

The rules, in order; the first that finds a non-empty answer wins:

1. `tag`: the last closed `<solution>…</solution>` or `<answer>…</answer>` block (an unclosed block at the very end,
   as a response cut by the token budget leaves it, counts too). Inside the block: its last `\\boxed{}`, an answer
   phrase, or the whole block.
2. `hashes`: the GSM8K marker `#### X` (its last occurrence).
3. `final_answer`: "final answer is X" / "Final Answer: X" (the last occurrence), even when a `\\boxed{}` came earlier.
4. `boxed`: the last non-empty `\\boxed{}` / `\\fbox{}` (nested braces matched).
5. `answer_phrase`: "the answer is X" / "Answer: X" (the last occurrence).
6. `final_line`: the last non-empty line (or a display-math block that ends the response) when it is a bare
   expression; else that line's last inline math (`$…$`, `\\(…\\)`); else its only stand-alone number when the line
   concludes (it starts with so/thus/therefore/hence, or the number follows "is", "=", "equals" and ends the line).
7. `last_number`: the last stand-alone number of the whole response, not counting a parenthetical aside that ends
   it; only when the task asks for it (GSM8K).

Reasoning is not an answer: when a response has a closed `<think>` block (or only its closing tag, as when the prompt
opened it), the rules read what follows the last `</think>`.

`strict=True` keeps rules 1-4 only (an explicit answer marker) and takes what they mark whole: no number is picked
out of a prose block, and there is no final-line or last-number fallback.

The extracted text is cleaned (math delimiters, markdown bold, a final period) but otherwise left whole; reading it
as a number, list, interval or expression is the comparison's job (`rcl.tasks.answer_check`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAG_RE = re.compile(r"<(solution|answer)>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)
_OPEN_TAG_RE = re.compile(r"<(solution|answer)>", re.IGNORECASE)
_THINK_END_RE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES_RE = re.compile(r"####\s*([^\n]*)")
# "final answer" followed by is, a colon, "=", or a line end / bold marker (a "**Final Answer**" heading).
_FINAL_ANSWER_RE = re.compile(r"final\s+answer\s*(?:is\b|:|=|(?=\*\*|\n|$))\s*:?", re.IGNORECASE)
_ANSWER_PHRASE_RE = re.compile(r"\banswer\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)
_INLINE_MATH_RE = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL
)  # an escaped \$ is a dollar sign, not a delimiter
_DISPLAY_END_RE = re.compile(r"(?:\\\[(.+?)\\\]|\$\$(.+?)\$\$)\s*\.?\s*$", re.DOTALL)
# Where an answer phrase's object ends: a sentence end, a line end, a semicolon, or a comma that starts a clause.
_PHRASE_END_RE = re.compile(
    r"\.(?=\s|$)|\n|;|,\s+(?=[A-Za-z]{2})|\s+(?:so|which|because|since|as|and then|where|when)\s", re.IGNORECASE
)
# A stand-alone number: not glued to a letter or digit before it ("AZYUK2A" holds none), with an optional sign (not a
# binary minus as in "10-3"), currency, thousands separators and decimals; or a clock time.
NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.:])"
    r"(?:\d{1,2}:\d{2}(?!\d)"  # a clock time
    r"|(?:(?<![\w)\]}])[-+−])?(?:\\?\$\s*)?"
    r"(?:\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)(?:\.\d+)?(?!\d|:\d))"
)
# A concluding sentence: it starts with so/thus/therefore/hence, or its number follows "is", "=", "equals", ...
_CONCLUSION_RE = re.compile(
    r"^\W*(?:so|thus|therefore|hence|in total|in all|altogether)\b"
    r"|\b(?:is|are|was|were|equals|=|gives|get|makes)\s*[-+−]?\\?\$?\s*\d[\d,.]*\s*[A-Za-z ]{0,20}\W*$",
    re.IGNORECASE,
)
_TRAILING_ASIDE_RE = re.compile(r"\s*\([^()]*\)\W*$")
_MAX_BARE_CHARS = 80
_MATH_WORDS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "pi", "inf", "infty", "or",
               "and", "i", "e"}


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    """The final answer, cleaned but whole; None when no rule found one."""
    rule: str | None
    """Which rule found it (see the module docstring), None when none did."""


def extract_answer(text: str, last_number: bool = False, strict: bool = False) -> Extraction:
    """The final answer of `text` by the documented rules (`last_number` enables rule 7, `strict` keeps rules 1-4)."""
    if not text:
        return Extraction(None, None)
    ends = list(_THINK_END_RE.finditer(text))
    if ends:
        text = text[ends[-1].end():]
    block = last_tag_block(text)
    if block is not None:
        answer = _in_block(block, last_number, strict)
        if answer:
            return Extraction(_unboxed(answer), "tag")
    rules = [("hashes", _hashes), ("final_answer", _final_answer), ("boxed", last_boxed)]
    if not strict:
        rules += [("answer_phrase", _answer_phrase), ("final_line", _final_line)]
        if last_number:
            rules.append(("last_number", _last_number))
    for rule, find in rules:
        answer = find(text)
        answer = _unboxed(clean(answer)) if answer is not None else None
        if answer:
            return Extraction(answer, rule)
    return Extraction(None, None)


def _unboxed(answer: str) -> str:
    """`\\boxed{x}` marked inside another rule's answer (as in `\\[\\boxed{x}\\]`) is `x`."""
    boxed = last_boxed(answer) if "\\boxed" in answer or "\\fbox" in answer else None
    return clean(boxed) if boxed else answer


def last_tag_block(text: str) -> str | None:
    """Content of the last non-empty `<solution>`/`<answer>` block; an unclosed one after the last closed block runs to
    the end of the text. None when there is none."""
    blocks = [(m.start(), m.group(2)) for m in _TAG_RE.finditer(text)]
    closed_end = max((m.end() for m in _TAG_RE.finditer(text)), default=0)
    opened = [m for m in _OPEN_TAG_RE.finditer(text) if m.start() >= closed_end]
    if opened:
        blocks.append((opened[-1].start(), text[opened[-1].end():]))
    for _, content in sorted(blocks, reverse=True):
        if content.strip():
            return content
    return None


def _in_block(block: str, last_number: bool, strict: bool) -> str | None:
    for find in (last_boxed, _final_answer, _answer_phrase):
        answer = find(block)
        if answer is not None and clean(answer):
            return clean(answer)
    whole = clean(block)
    if strict or is_bare(whole):
        return whole
    maths = math_segments(block)
    if maths:
        return clean(maths[-1])
    numbers = NUMBER_RE.findall(block)
    if len(numbers) == 1 or (numbers and last_number):
        return clean(numbers[-1])
    return whole if len(whole) <= _MAX_BARE_CHARS and "\n" not in whole else None


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty `\\boxed{...}` (nested braces matched), or of `\\boxed x`."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        start = match.end()
        if start < len(text) and text[start] == "{":
            content = _braced(text, start)
            if content is not None and content.strip():
                return content.strip()
        else:
            token = re.match(r"[^\s$]+", text[start:])
            if token:
                return token.group(0)
    return None


def _braced(text: str, start: int) -> str | None:
    """The content of the brace group opening at `text[start]`, or None when it never closes."""
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start + 1 : end]
    return None


def _hashes(text: str) -> str | None:
    matches = _HASHES_RE.findall(text)
    return matches[-1] if matches else None


def _final_answer(text: str) -> str | None:
    return _after_last(_FINAL_ANSWER_RE, text)


def _answer_phrase(text: str) -> str | None:
    return _after_last(_ANSWER_PHRASE_RE, text)


def _after_last(pattern: re.Pattern, text: str) -> str | None:
    """The answer a phrase introduces: a box or math right after it, else its words up to the clause end."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end():].lstrip(" \t\n*:")
    head = _PHRASE_END_RE.split(tail, maxsplit=1)[0]
    boxed = last_boxed(head) if _BOXED_RE.search(head) else None
    if boxed is not None:
        return boxed
    math = _INLINE_MATH_RE.match(tail)
    if math and is_bare(clean(next(filter(None, math.groups())))):
        return next(filter(None, math.groups()))
    if len(head.split()) > 1 and not re.search(r"[\d\\$]", head):  # prose ("the answer is not obvious ...")
        return None
    return head


def _final_line(text: str) -> str | None:
    stripped = text.rstrip()
    display = _DISPLAY_END_RE.search(stripped)
    if display:
        return next(filter(None, display.groups()))
    lines = [line for line in stripped.splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[-1]
    if is_bare(clean(line)):
        return line
    maths = math_segments(line)
    if maths:
        return maths[-1]
    numbers = NUMBER_RE.findall(line)
    if len(numbers) == 1 and _CONCLUSION_RE.search(line):
        return numbers[0]
    return None


def math_segments(text: str) -> list[str]:
    """The inline-math contents of `text` that are expressions: `$15, so the change is -$` is two prices in prose,
    not math."""
    segments = [next(filter(None, groups)) for groups in _INLINE_MATH_RE.findall(text)]
    return [segment for segment in segments if is_bare(clean(segment))]


def _last_number(text: str) -> str | None:
    text = _TRAILING_ASIDE_RE.sub("", text)  # "3 buses (2 hold only 80 of the 90)." answers 3
    numbers = NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def is_bare(answer: str) -> bool:
    """A short expression rather than prose: no word of two or more letters outside LaTeX commands and `\\text{}`
    (math function names such as sqrt and pi allowed), on one line."""
    if not answer or len(answer) > _MAX_BARE_CHARS or "\n" in answer:
        return False
    without_latex = re.sub(r"\\[a-zA-Z]+", " ", re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", " ", answer))
    words = re.findall(r"[A-Za-z]{2,}", without_latex)
    return all(word.lower() in _MATH_WORDS for word in words)


def clean(answer: str) -> str:
    """Strip whitespace, markdown bold, enclosing math delimiters and a final period or colon."""
    previous = None
    while previous != answer:
        previous = answer
        answer = answer.strip().strip("*").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
                inner = answer[len(left) : len(answer) - len(right)]
                if left != "$" or "$" not in inner.replace("\\$", ""):
                    answer = inner
        if answer.endswith((".", ":")) and not answer.endswith(".."):
            answer = answer[:-1]
    return answer
