"""SAT (Affine): planted-solution k-SAT. The model gives an assignment; the checker verifies every clause.

Row fields:
- `question`: the formula and the answer format.
- `num_vars`: n; variables are x1..xn.
- `clauses`: list of clauses, each a list of non-zero ints in DIMACS style (3 means x3, -3 means not x3).
- `planted`: the planted assignment, a list of n bools (x1 first): it satisfies every clause by construction.

Scoring is all-or-nothing: reward 1 iff every clause has a literal made true by the parsed assignment. The answer
(the last <answer> section, else the text, reasoning removed) is read as `x<i>=True|False|1|0` pairs; the last value
given for a variable wins, and an unassigned variable satisfies no literal. Details: `passed` (clauses satisfied),
`total` (clauses), `outcome` (pass | wrong_answer | no_answer when no variable is assigned), `assigned`.
"""

from __future__ import annotations

import random
import re

from rcl.tasks.base import Score, Task, register_task
from rcl.tasks.extract import answer_text

# x1=True, as the prompt asks, and as models also write it: x_1, x_{1}, "x1 is true", x1 -> T, x1 = **True**,
# $x_1 = \text{True}$. A later mention of a variable overrides an earlier one.
_ASSIGNMENT_RE = re.compile(
    r"\bx_?\{?(\d+)\}?\s*(?:=|:|is|->|→)\s*"
    r"(?:\*\*|\\(?:text|texttt|textbf|mathrm|mathtt)\{)?\s*(true|false|t|f|1|0)\b",
    re.IGNORECASE)


def planted_instance(rng: random.Random, num_vars: int, k: int, ratio: float) -> tuple[list[list[int]], list[bool]]:
    """round(ratio * n) clauses of k distinct variables with random signs; a clause that the planted assignment
    would leave unsatisfied gets one of its literals flipped, so the planted assignment satisfies every clause."""
    solution = [rng.random() < 0.5 for _ in range(num_vars)]
    clauses = []
    for _ in range(round(ratio * num_vars)):
        variables = rng.sample(range(1, num_vars + 1), k)
        clause = [v if rng.random() < 0.5 else -v for v in variables]
        if not any((literal > 0) == solution[abs(literal) - 1] for literal in clause):
            index = rng.randrange(k)
            clause[index] = -clause[index]
        clauses.append(clause)
    return clauses, solution


def satisfied(clauses: list[list[int]], assignment: dict[int, bool]) -> int:
    """How many clauses have a literal made true by `assignment` (variable -> value; missing = satisfies none)."""
    return sum(any(assignment.get(abs(lit)) is (lit > 0) for lit in clause) for clause in clauses)


def parse_assignment(text: str) -> dict[int, bool]:
    return {int(var): value.lower() in ("true", "t", "1") for var, value in _ASSIGNMENT_RE.findall(text)}


def format_assignment(values: list[bool]) -> str:
    return ", ".join(f"x{i}={value}" for i, value in enumerate(values, start=1))


def render(num_vars: int, clauses: list[list[int]]) -> str:
    def literal(lit: int) -> str:
        return f"x{lit}" if lit > 0 else f"not x{-lit}"

    formula = "\n".join("(" + " or ".join(literal(lit) for lit in clause) + ")" for clause in clauses)
    return (
        f"Find a True/False value for each of the variables x1 to x{num_vars} that makes every clause below true "
        f"(each clause needs at least one true literal).\n\n{formula}\n\n"
        f"Answer with every variable, in the form x1=True, x2=False, ..., x{num_vars}=..."
    )


@register_task("sat")
class SatTask(Task):
    """Planted k-SAT near the clause ratio 4.2 (the Affine guide's generator: 10-20 variables, k = 3-5)."""

    fields = ("num_vars", "clauses", "planted")

    def __init__(self, min_vars: int = 10, max_vars: int = 20, min_k: int = 3, max_k: int = 5, ratio: float = 4.2):
        if not 1 <= min_vars <= max_vars or not 1 <= min_k <= max_k or max_k > min_vars:
            raise ValueError("need 1 <= min_vars <= max_vars, 1 <= min_k <= max_k <= min_vars")
        self.min_vars, self.max_vars, self.min_k, self.max_k, self.ratio = min_vars, max_vars, min_k, max_k, ratio

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        """`num` instances (default 100), deterministic in (split, seed)."""
        rows = []
        for index in range(100 if num is None else num):
            rng = random.Random(f"sat/{split}/{seed}/{index}")
            num_vars = rng.randint(self.min_vars, self.max_vars)
            clauses, solution = planted_instance(rng, num_vars, rng.randint(self.min_k, self.max_k), self.ratio)
            rows.append({"question": render(num_vars, clauses), "num_vars": num_vars, "clauses": clauses,
                         "planted": solution})
        return rows

    def gold_completion(self, row: dict) -> str:
        return format_assignment(row["planted"])

    def score(self, completion: str, row: dict) -> Score:
        assignment = parse_assignment(answer_text(completion))
        assignment = {var: value for var, value in assignment.items() if 1 <= var <= row["num_vars"]}
        clauses = row["clauses"]
        passed = satisfied(clauses, assignment)
        correct = passed == len(clauses)
        outcome = "pass" if correct else "wrong_answer" if assignment else "no_answer"
        details = {"passed": passed, "total": len(clauses), "outcome": outcome, "assigned": len(assignment)}
        return Score(float(correct), correct, details)
