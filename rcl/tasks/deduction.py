"""Deduction (Affine): from a problem description, write the program; verified by the problem's tests.

Rows are the code task's generated stdin/stdout problems (rcl.tasks.programs): `question`, `tests` ({"input",
"output"} cases), `solution` (the reference program, the SFT label's source), `family`. Scoring is the code task's,
all-or-nothing: reward 1 iff every test passes in the sandbox; details as the code task's.
"""

from __future__ import annotations

from rcl.sandbox import SandboxConfig
from rcl.tasks.base import register_task
from rcl.tasks.code import CodeTask


@register_task("deduction")
class DeductionTask(CodeTask):
    """Write the program (the Affine DED environment, on generated problems)."""

    def __init__(
        self, sandbox: SandboxConfig | dict | None = None, tests_per_problem: int = 5, families: list[str] | None = None
    ):
        super().__init__(sandbox, reward="binary", dataset="programs", tests_per_problem=tests_per_problem,
                         families=families)

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        return super().rows(f"deduction/{split}", num, seed)
