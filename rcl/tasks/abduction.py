"""Abduction (Affine): given a program and the output it printed, give an input that makes it print that output.

Row fields:
- `question`: the program, its output, and the answer format.
- `program`: the Python program (reads stdin, writes stdout).
- `output`: the expected output.
- `input`: a reference input that produces `output` (the SFT label's source).
- `family`: the program family (rcl.tasks.programs).

Scoring is all-or-nothing, by running the program in the sandbox on the model's input: the last <INPUT>...</INPUT>
block (reasoning removed; a code fence around the input and blank lines at its ends dropped). Reward 1 iff the
program exits 0 and prints `output` (compared like the code task's stdin/stdout tests). Details: `passed`/`total` (0
or 1 of 1), `outcome` (the run's class; no_answer without an <INPUT> block), `message`; infra_error sets `error`.
"""

from __future__ import annotations

from rcl.sandbox import SandboxConfig
from rcl.tasks.base import Score, register_task
from rcl.tasks.code import SandboxedTask, infra_score
from rcl.tasks.extract import fenced_body, last_tagged, strip_reasoning
from rcl.tasks.programs import generate

QUESTION = (
    "This Python program printed the output below. Find an input (what it reads from standard input) that makes it "
    "print exactly that output.\n\n```python\n{program}```\n\nOutput:\n```\n{output}\n```\n\n"
    "Give the input between <INPUT> and </INPUT>."
)


@register_task("abduction")
class AbductionTask(SandboxedTask):
    """Find the input (the Affine ABD environment, on generated programs)."""

    fields = ("program", "output", "input")

    def __init__(self, sandbox: SandboxConfig | dict | None = None, families: list[str] | None = None):
        super().__init__(sandbox)
        self.families = list(families) if families else None

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        rows = []
        for program, rng in generate(f"abduction/{split}", 100 if num is None else num, seed, self.families):
            stdin = program.make_input(rng)
            output = program.solve(stdin)
            rows.append({
                "question": QUESTION.format(program=program.code, output=output),
                "program": program.code, "output": output, "input": stdin, "family": program.family,
            })
        return rows

    def gold_completion(self, row: dict) -> str:
        return f"<INPUT>\n{row['input']}</INPUT>"

    def score(self, completion: str, row: dict) -> Score:
        given = last_tagged(strip_reasoning(completion), "INPUT")
        if given is None:
            return Score(0.0, False, {"passed": 0, "total": 1, "outcome": "no_answer", "message": "no <INPUT>"})
        # the input fenced within the tags (<INPUT>```\n5 3\n```</INPUT>), as chat models often write it
        fenced = fenced_body(given)
        stdin = (given if fenced is None else fenced).strip("\n") + "\n"
        try:
            result = self.sandbox.run_tests(row["program"], [{"input": stdin, "output": row["output"]}])[0]
        except OSError as error:
            return infra_score(f"{type(error).__name__}: {error}", total=1)
        if result.outcome == "infra_error":
            return infra_score(result.error, total=1)
        correct = result.outcome == "pass"
        details = {"passed": int(correct), "total": 1, "outcome": result.outcome, "message": result.error[:500]}
        return Score(float(correct), correct, details)
