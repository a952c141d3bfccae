"""Reasoning formats: how a completion separates its reasoning from its answer, and whether it follows the format.

- `none`: no format; the whole completion is read for the answer.
- `reasoning_answer`: `<reasoning>…</reasoning>` then `<answer>…</answer>`, nothing else around them.
- `think`: `<think>…</think>` then a non-empty answer (the opening `<think>` may sit in the prompt, as R1-style
  templates put it there).
- `think_answer`: `<think>…</think>` then `<answer>…</answer>` (the R1 format; the opening `<think>` may sit in the
  prompt).

A task applies the format in one of two modes (`rcl.tasks.math_task.MathTask`): `gate` reads the answer only from a
valid format and scores a broken format as wrong (reward 0); `additive` reads the answer leniently and leaves the format
to a separate, weighted `format` reward. Either way the format is reported as `details["format_ok"]`, never as
accuracy: `correct` only ever means a right answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FormatStyle = Literal["none", "reasoning_answer", "think", "think_answer"]
FormatMode = Literal["gate", "additive"]

_PATTERNS: dict[str, re.Pattern] = {
    "reasoning_answer": re.compile(
        r"\s*<reasoning>(?P<reasoning>.+?)</reasoning>\s*<answer>(?P<answer>.+?)</answer>\s*", re.DOTALL
    ),
    "think": re.compile(r"\s*(?:<think>)?(?P<reasoning>(?:(?!<think>).)+?)</think>\s*(?P<answer>\S.*?)\s*", re.DOTALL),
    "think_answer": re.compile(
        r"\s*(?:<think>)?(?P<reasoning>(?:(?!<think>).)+?)</think>\s*<answer>(?P<answer>.+?)</answer>\s*", re.DOTALL
    ),
}
_INSTRUCTIONS = {
    "none": "",
    "reasoning_answer": "Reason inside <reasoning></reasoning>, then give only the final answer inside "
                        "<answer></answer>.",
    "think": "Think inside <think></think>, then give the final answer.",
    "think_answer": "Think inside <think></think>, then give only the final answer inside <answer></answer>.",
}


@dataclass(frozen=True)
class ReasoningFormat:
    style: FormatStyle = "none"

    def __post_init__(self) -> None:
        if self.style not in _INSTRUCTIONS:
            raise ValueError(f"unknown reasoning format {self.style!r}; use one of {', '.join(_INSTRUCTIONS)}")

    @property
    def instruction(self) -> str:
        """One sentence asking for the format (empty for `none`)."""
        return _INSTRUCTIONS[self.style]

    def answer_part(self, completion: str) -> str | None:
        """The answer the format delimits, or None when `completion` does not follow the format (`none`: the whole
        completion)."""
        if self.style == "none":
            return completion
        match = _PATTERNS[self.style].fullmatch(completion)
        if match is None or not match.group("answer").strip():
            return None
        return match.group("answer").strip()

    def is_valid(self, completion: str) -> bool:
        return self.answer_part(completion) is not None

    def wrap(self, reasoning: str, answer: str) -> str:
        """A completion in this format (for canned completions and SFT targets); `none` uses `<solution>` tags."""
        if self.style == "none":
            return f"{reasoning}\n<solution>{answer}</solution>" if reasoning else f"<solution>{answer}</solution>"
        if self.style == "reasoning_answer":
            return f"<reasoning>{reasoning}</reasoning>\n<answer>{answer}</answer>"
        if self.style == "think":
            return f"<think>{reasoning}</think>\n{answer}"
        return f"<think>{reasoning}</think>\n<answer>{answer}</answer>"
