"""The one prompt builder shared by SFT, RL and evaluation.

The original rendered SFT through a chat template with labelled sections but sent raw `str.format` text at RL time, so
the policy was trained on one format and sampled in another. Here every role's prompt is a list of chat messages
rendered by that role's own tokenizer, and the teacher's SFT target has exactly the shape its RL completions have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from rcl.tasks.extract import strip_reasoning

# The teacher's trained format, exactly (the teaching_format reward checks it).
THINKING_RE = re.compile(r"<thinking>(.*?)</thinking>", re.DOTALL)
TEACHING_RE = re.compile(r"<teaching>(.*?)</teaching>", re.DOTALL)
# What the student is shown is read more leniently: a <Teaching> block is still the teaching.
_TEACHING_BLOCK_RE = re.compile(r"<teaching>(.*?)</teaching>", re.DOTALL | re.IGNORECASE)
_TEACHING_TAG_RE = re.compile(r"</?teaching>", re.IGNORECASE)
SOLUTION_INSTRUCTION = "Put the final answer in <solution></solution>."


@dataclass
class PromptTemplates:
    """Chat prompts of every role. Placeholders: {question}, {approach}, {teaching}."""

    teacher_system: str | None = "You are a teacher. Diagnose the student, then guide without giving the answer."
    """System message of the teacher (null for none)."""
    teacher_user: str = "Question: {question}\nStudent's approach: {approach}"
    """The teacher's user turn: question and the student's diagnostic approach."""
    student_system: str | None = None
    """System message of the student (null for none)."""
    student_baseline: str = "{question}\n" + SOLUTION_INSTRUCTION
    """Student solving alone."""
    student_probe: str = "{question}\nState your approach briefly."
    """Student's short diagnostic approach (the probe)."""
    student_with_teaching: str = "{question}\nGuidance: {teaching}\n" + SOLUTION_INSTRUCTION
    """Student solving with the teacher's guidance."""


StudentPrompt = Literal["baseline", "probe", "with_teaching"]


def _with_system(system: str | None, user: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    return messages


def teacher_messages(templates: PromptTemplates, question: str, approach: str) -> list[dict[str, str]]:
    return _with_system(templates.teacher_system, templates.teacher_user.format(question=question, approach=approach))


def student_messages(
    templates: PromptTemplates, kind: StudentPrompt, question: str, teaching: str | None = None
) -> list[dict[str, str]]:
    template = {
        "baseline": templates.student_baseline,
        "probe": templates.student_probe,
        "with_teaching": templates.student_with_teaching,
    }[kind]
    if kind == "with_teaching" and teaching is None:
        raise ValueError("the with_teaching prompt needs a teaching")
    return _with_system(templates.student_system, template.format(question=question, teaching=teaching or ""))


def teacher_target(diagnosis: str, teaching: str) -> str:
    """The teacher's completion: private reasoning, then student-facing guidance."""
    return f"<thinking>{diagnosis.strip()}</thinking>\n<teaching>{teaching.strip()}</teaching>"


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Chat-template `messages` as a generation prompt (ends where the assistant's turn begins)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


MissingTeaching = Literal["strip_thinking", "empty"]


@dataclass(frozen=True)
class Teaching:
    text: str
    """What the student is shown."""
    has_tags: bool
    """Whether the completion had a closed <teaching> block."""


def private_reasoning_removed(completion: str) -> str:
    """The completion without its reasoning: `<thinking>` blocks, and the `<think>` or `<reasoning>` blocks that
    reasoning models write by themselves, in any case (`rcl.tasks.extract.strip_reasoning`). Reasoning is private
    until it is closed: an unclosed one (a truncated thought, which may state the answer) hides everything after it,
    and a closing tag that the chat template opened in the prompt hides everything before it."""
    return strip_reasoning(completion)


def extract_teaching(completion: str, missing: MissingTeaching = "strip_thinking") -> Teaching:
    """What the student is shown: the first `<teaching>` block outside the private reasoning.

    The reasoning is removed first (see `private_reasoning_removed`), so neither a closed nor an unclosed
    `<thinking>` block ever reaches the student, wherever it stands. Without a closed `<teaching>` block (none, or
    one cut off by the token budget) `has_tags` is False and `missing` decides: `strip_thinking` shows the public
    rest with any stray teaching tags removed (for a truncated teaching, the guidance written so far); `empty` shows
    nothing.
    """
    public = private_reasoning_removed(completion)
    match = _TEACHING_BLOCK_RE.search(public)
    if match:
        return Teaching(match.group(1).strip(), True)
    if missing == "empty":
        return Teaching("", False)
    return Teaching(_TEACHING_TAG_RE.sub("", public).strip(), False)
