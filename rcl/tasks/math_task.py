"""The math and GSM8K tasks: a final answer checked against a reference.

Rows: `question` and `ground_truth` (plain, `\\boxed{}`, GSM8K's `… #### 42`, LaTeX or a list). Extraction follows
`rcl.tasks.answer_extraction`, comparison `rcl.tasks.answer_check`. `gsm8k` differs from `math` in one rule: the last
number of a response is its answer when nothing else marks one, and it ships a synthetic word-problem set.

Score: reward 1.0 for a right answer, else 0.0; `details` hold `extracted` (the answer read, or None), `rule` (which
extraction rule found it, `format:<rule>` inside a reasoning format's answer part), `gold`, `match` (what decided), `outcome` (correct, wrong, no_answer, bad_format, error,
timeout), `format_ok` when the task has a reasoning format, and `error` when the check could not be made.
"""

from __future__ import annotations

from typing import Any

from rcl.tasks.answer_check import DEFAULT_TIMEOUT_S, compare, normalize_gold
from rcl.tasks.answer_extraction import extract_answer
from rcl.tasks.base import Score, Task, register_task
from rcl.tasks.formats import FormatMode, FormatStyle, ReasoningFormat
from rcl.tasks.splits import take_split


@register_task("math")
class MathTask(Task):
    fields = ("ground_truth",)
    last_number_fallback = False
    """Whether the last number of a response is its answer when nothing else marks one (GSM8K only)."""

    def __init__(
        self,
        strict: bool = False,
        format: FormatStyle = "none",
        format_mode: FormatMode = "gate",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        instruction: str | None = None,
    ) -> None:
        """
        Args:
            strict: Only explicit answer markers (tags, `####`, "final answer", `\\boxed{}`), read whole: no number is
                picked out of prose, no unit or `x =` is dropped, and 50% is not 0.5.
            format: Reasoning format of the completions (rcl.tasks.formats): none, reasoning_answer, think,
                think_answer.
            format_mode: gate (a completion that breaks the format is wrong) or additive (the answer is read anyway;
                reward the format with the `format` reward).
            timeout_s: Most seconds of one symbolic check; a check that overruns is counted as a timeout.
            instruction: Appended to the question in the prompt (null: none; the prompt templates usually ask for
                the format, and SFT prompts must match).
        """
        if format_mode not in ("gate", "additive"):
            raise ValueError(f"format_mode must be gate or additive, got {format_mode!r}")
        self.strict = strict
        self.format = ReasoningFormat(format)
        self.format_mode = format_mode
        self.timeout_s = timeout_s
        self.instruction = instruction

    def prompt(self, row: dict) -> str:
        return f"{row['question']}\n{self.instruction}" if self.instruction else row["question"]

    def score(self, completion: str, row: dict) -> Score:
        gold = row["ground_truth"]
        details: dict[str, Any] = {"gold": normalize_gold(gold)}
        text, where = completion, ""
        if self.format.style != "none":
            part = self.format.answer_part(completion)
            details["format_ok"] = part is not None
            if part is not None:
                text, where = part, "format:"  # the rules read the format's answer part
            elif self.format_mode == "gate":
                return Score(0.0, False, {**details, "extracted": None, "rule": None, "outcome": "bad_format"})
        extraction = extract_answer(text, last_number=self.last_number_fallback, strict=self.strict)
        details.update(extracted=extraction.answer, rule=extraction.rule and where + extraction.rule)
        if extraction.answer is None:
            return Score(0.0, False, {**details, "outcome": "no_answer"})
        verdict = compare(extraction.answer, gold, strict=self.strict, timeout=self.timeout_s)
        details["match"] = verdict.how
        if verdict.error:
            outcome = "timeout" if verdict.timed_out else "error"
            return Score(0.0, False, {**details, "outcome": outcome, "error": verdict.error})
        outcome = "correct" if verdict.equal else "wrong"
        return Score(float(verdict.equal), verdict.equal, {**details, "outcome": outcome})

    def gold_completion(self, row: dict) -> str:
        return self.format.wrap("I work it out step by step.", normalize_gold(row["ground_truth"]))

    def format_only_completion(self, row: dict) -> str:
        return self.format.wrap("I work it out step by step.", "?")


@register_task("gsm8k")
class GSM8KTask(MathTask):
    """Grade-school word problems; `rows()` generates rcl's synthetic GSM8K-style set (answers as `… #### N`)."""

    last_number_fallback = True

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        from data_modules import word_problems

        return take_split(lambda n: word_problems.to_rl_rows(word_problems.generate_word_problems(n, seed)), split, num)
