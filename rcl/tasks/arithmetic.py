"""The arithmetic task: rcl's synthetic additions (`data_modules.synthetic`), checked by the math verifier.

Rows: `question` ("What is 47+38?") and `ground_truth` ("85"). The last number of a response is its answer when
nothing else marks one, as for GSM8K: the answers are whole numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from rcl.tasks.base import register_task
from rcl.tasks.math_task import MathTask
from rcl.tasks.splits import take_split


@register_task("arithmetic")
class ArithmeticTask(MathTask):
    last_number_fallback = True

    def __init__(self, levels: Sequence[int] = (1, 2), **kwargs) -> None:
        """
        Args:
            levels: Difficulty levels of `rows()` (1: one-digit, 2: two-digit, 3: three-digit additions).
            **kwargs: The math task's options (strict, format, format_mode, timeout_s, instruction).
        """
        super().__init__(**kwargs)
        self.levels = tuple(levels)

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        from data_modules import synthetic

        capacity = sum(synthetic.pair_count(level) for level in set(self.levels))

        def generate(n: int) -> list[dict]:
            problems = synthetic.generate_problems(min(n, capacity), seed, self.levels)
            return [{"question": p["question"], "ground_truth": p["answer"]} for p in problems]

        return take_split(generate, split, num)
