"""Is a teaching right? For the synthetic additions ("What is 47+38?") the teaching a good teacher gives is known
exactly ("ones 7+8=15, carry 1", `data_modules.synthetic.make_problem`), so a teaching can be checked step by step:
did it name the right ones digits, add them right and state the right carry. Other tasks cannot be checked (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

QUESTION_RE = re.compile(r"What is (\d+)\s*\+\s*(\d+)\?")
TEACHING_STEP_RE = re.compile(r"ones\s+(\d+)\s*\+\s*(\d+)\s*=\s*(\d+)\s*,\s*carry\s+(\d+)")

Verdict = Literal["correct", "wrong_digits", "wrong_arithmetic", "unparseable", "missing_tags", "over_long"]
VERDICTS: tuple[Verdict, ...] = ("correct", "wrong_digits", "wrong_arithmetic", "unparseable", "missing_tags",
                                 "over_long")


@dataclass(frozen=True)
class TeachingStep:
    """The ones-column step of an addition: its two digits, their sum and the carry."""

    left: int
    right: int
    total: int
    carry: int


def expected_step(question: str) -> TeachingStep | None:
    """The step a right teaching states for an addition question, or None when the question is not one."""
    match = QUESTION_RE.search(question)
    if match is None:
        return None
    a, b = (int(g) % 10 for g in match.groups())
    return TeachingStep(a, b, a + b, (a + b) // 10)


def stated_step(teaching: str) -> TeachingStep | None:
    """The first "ones a+b=s, carry c" a teaching states, or None."""
    match = TEACHING_STEP_RE.search(teaching)
    return None if match is None else TeachingStep(*(int(g) for g in match.groups()))


def teaching_verdict(question: str, teaching: str, has_tags: bool = True, truncated: bool = False) -> Verdict | None:
    """What is wrong with a teaching, first failure first: no <teaching> tags, cut off at the length limit (over-long),
    no ones-column step in it, the wrong digits (not the question's ones digits), wrong sum or carry; else correct.
    None when the question cannot be checked."""
    expected = expected_step(question)
    if expected is None:
        return None
    if not has_tags:
        return "missing_tags"
    if truncated:
        return "over_long"
    stated = stated_step(teaching)
    if stated is None:
        return "unparseable"
    if (stated.left, stated.right) != (expected.left, expected.right):
        return "wrong_digits"
    if stated != expected:
        return "wrong_arithmetic"
    return "correct"


def teaching_is_correct(question: str, teaching: str) -> bool | None:
    """True when the teaching states the question's ones-column step right; None when the question is not checkable."""
    verdict = teaching_verdict(question, teaching)
    return None if verdict is None else verdict == "correct"
