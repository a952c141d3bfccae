"""The code task: run the completion's program against the row's tests in the sandbox (rcl.sandbox).

Row fields:
- `question`: the problem text shown to the model.
- Tests, one of:
  - `tests`: stdin/stdout cases, a list of {"input": str, "output": str} (or that list as a JSON string). A case
    passes when the program exits 0 and its stdout equals `output` up to line endings, trailing spaces and blank lines
    at either end.
  - `test` + `entry_point` (HumanEval's convention): `test` defines `check(candidate)`, and `entry_point` names the
    function passed as `candidate`. One test: check passes or not. Optional `prompt` (the signature and docstring) is
    put before the completion's code when that code does not define `entry_point` itself (a body-only completion,
    indented back one level when its fence lost the indentation);
    when it does, only the prompt's other top-level statements (imports, helpers) go before it (`prompt_context`).
  - `asserts` (MBPP's `test_list`): assert statements that call the function under test, or that list as a JSON
    string. Each is one test, run in the judge like `test` (partial credit per assert); the function is the row's
    `entry_point`, else the first one the first assert calls. An optional `test_setup_code` (MBPP's) runs before
    each. The prompt shows the asserts after the question, as MBPP's does, unless the question already holds them.
- `solution`: a reference program (HumanEval: the prompt plus the canonical solution). RL rows carry it: the reward
  self-test scores it as the gold answer, and it is the SFT label.
- `language` (optional): a language configured in the sandbox; default the task's `language`.

Scores (Score.details): `passed`, `total`, `outcome` (pass, or the first failing test's class: wrong_answer, timeout,
memory, crash; no_answer when the completion holds no code; infra_error if any test hit an infrastructure error,
which also sets `error` and is not the model's failure), `outcomes` (count per class) and `message` (the first
failure's reason).

Reward (the Q-language system's design): `partial` gives passed/total * base_weight, plus perfect_weight when every
test passes; `binary` gives 1 when every test passes, else 0. `max_tests` keeps the first N stdin/stdout cases or
asserts (for training); leave it unset for evaluation, which then runs every test.
"""

from __future__ import annotations

import ast
import builtins
import copy
import json
import random
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from rcl.sandbox import RunResult, SandboxConfig, shared_sandbox
from rcl.sandbox.judge import free_names
from rcl.tasks.base import Score, Task, register_task
from rcl.tasks.extract import extract_code
from rcl.tasks.humaneval import humaneval_rows
from rcl.tasks.programs import stdio_rows


def sandbox_config(sandbox: SandboxConfig | dict | None) -> SandboxConfig:
    if sandbox is None:
        return SandboxConfig()
    return sandbox if isinstance(sandbox, SandboxConfig) else SandboxConfig(**sandbox)


def infra_score(error: str, total: int = 0) -> Score:
    """A verifier failure: reported in details["error"], never counted as the model's wrong answer."""
    return Score(0.0, False, {"passed": 0, "total": total, "outcome": "infra_error", "outcomes": {}, "error": error})


def tests_of(row: dict) -> list[dict] | None:
    tests = row.get("tests")
    if isinstance(tests, str):
        tests = json.loads(tests)
    return tests


def continuation(prompt: str, body: str) -> str:
    """The prompt continued by a body-only completion. A body that a code fence left unindented (its `return` then
    stands outside any function) is indented one level, as the body of the prompt's last function."""
    program = prompt + body
    try:
        compile(program, "<completion>", "exec")
    except SyntaxError as error:
        if "outside function" in str(error.msg):
            indented = prompt + textwrap.indent(body, "    ")
            try:
                compile(indented, "<completion>", "exec")
                return indented
            except SyntaxError:
                pass
    return program


def asserts_of(row: dict) -> list[str] | None:
    """MBPP-style tests: a list of assert statements (or that list as a JSON string); None if the row has none."""
    asserts = row.get("asserts")
    if isinstance(asserts, str):
        asserts = json.loads(asserts)
    return asserts


def called_first(asserts: list[str]) -> str | None:
    """The function under test: the first non-builtin the first assert calls (`assert set(similar((3, 4), (4,))) ==
    {4}`: similar)."""
    try:
        tree = ast.parse(asserts[0])
    except (SyntaxError, IndexError):
        return None
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id not in dir(builtins)]
    return min(calls, key=lambda c: (c.lineno, c.col_offset)).func.id if calls else None


def assert_check(statement: str, setup: str = "") -> str:
    """One assert statement as HumanEval-style test code (a `check(candidate)` that runs it), after the row's setup.
    A standard-library module the assert uses unimported (`math.isclose`, which MBPP's asserts take from the program's
    namespace) is imported here, in the judge: across the sandbox only functions are called."""
    body = f"{setup}\n\ndef check(candidate):\n{textwrap.indent(statement.strip(), '    ')}\n"
    try:
        modules = sorted(free_names(body) & sys.stdlib_module_names)
    except SyntaxError:
        return body  # reported by the sandbox as the test code that does not parse
    return "".join(f"import {module}\n" for module in modules) + body


def defines(code: str, name: str) -> bool:
    """Whether the code defines `name` at its top level (a function, class, assignment or import)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def prompt_context(prompt: str, entry_point: str) -> str:
    """The prompt's top-level statements other than the entry point's own definition: its imports, constants and
    helper functions (HumanEval/38's `encode_cyclic`). A completion that rewrites the whole function often leaves them
    out, and would fail on a missing `List` rather than on its logic; the model's own definitions come after these,
    so they win. An unparsable prompt gives its import lines only."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return "".join(line for line in prompt.splitlines(keepends=True) if line.startswith(("import ", "from ")))
    lines = prompt.splitlines(keepends=True)
    kept = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept.append("".join(lines[first - 1 : node.end_lineno]).rstrip("\n") + "\n")
    return "".join(kept) + "\n\n" if kept else ""


class SandboxedTask(Task):
    """Shared by the tasks that run programs: one shared sandbox, and batch scoring on its worker pool."""

    def __init__(self, sandbox: SandboxConfig | dict | None = None):
        self.sandbox_config = sandbox_config(sandbox)

    @property
    def sandbox(self):
        return shared_sandbox(self.sandbox_config)

    def score_batch(self, completions: list[str], rows: list[dict]) -> list[Score]:
        """`score` for many completions at once, in parallel (at most the sandbox's `workers` runs at a time)."""
        if len(completions) != len(rows):
            raise ValueError("one row per completion")
        with ThreadPoolExecutor(max(1, min(len(rows), self.sandbox_config.workers))) as callers:
            return list(callers.map(self.score, completions, rows))


@register_task("code")
class CodeTask(SandboxedTask):
    """Write a program that passes the row's tests (see the module docstring for row fields and rewards)."""

    FIELDS = {"stdio": ("tests", "solution"), "assert": ("test", "entry_point", "prompt", "solution"),
              "asserts": ("asserts", "solution")}
    """Row fields RL rows carry, by test format; `solution` (a reference program) is what the reward self-test and
    SFT labels use as the gold answer."""

    def __init__(
        self,
        sandbox: SandboxConfig | dict | None = None,
        reward: Literal["partial", "binary"] = "partial",
        base_weight: float = 1.0,
        perfect_weight: float = 1.0,
        max_tests: int | None = None,
        language: str = "python",
        dataset: Literal["humaneval", "programs"] = "humaneval",
        tests_per_problem: int = 5,
        test_format: Literal["stdio", "assert", "asserts"] | None = None,
        families: list[str] | None = None,
        float_tolerance: float | None = None,
    ):
        """test_format: which row fields the rows carry (FIELDS: stdio tests, a HumanEval `test`, or MBPP-style
        `asserts`, plus solution), for rows that come from a dataset rather than `rows()`; default: the format of
        `dataset` (humaneval: assert, programs: stdio). Scoring reads whichever a row has. families: the program
        families `dataset: programs` draws from (default all; rcl.tasks.programs.FAMILIES). float_tolerance:
        stdin/stdout outputs also match when their numbers are within it, absolute or relative (APPS- and
        CodeContests-style real-valued answers; default None: exact, after whitespace normalisation)."""
        super().__init__(sandbox)
        if max_tests is not None and max_tests < 1:
            raise ValueError("max_tests must be >= 1 (or None for all tests)")
        self.reward_mode = reward
        self.base_weight = base_weight
        self.perfect_weight = perfect_weight
        self.max_tests = max_tests
        self.language = language
        self.dataset = dataset
        self.tests_per_problem = tests_per_problem
        self.families = list(families) if families else None
        if float_tolerance is not None and not float_tolerance >= 0:
            raise ValueError(f"float_tolerance must be >= 0 (or None for exact outputs), got {float_tolerance}")
        self.float_tolerance = float_tolerance
        self.fields = self.FIELDS[test_format or ("assert" if dataset == "humaneval" else "stdio")]
        self.sandbox_config.language(language)  # an unknown language fails here, not at the first score

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        """dataset humaneval: the 164 HumanEval problems (split "test" only); programs: generated stdin/stdout
        problems (rcl.tasks.programs), different for each split."""
        if self.dataset == "humaneval":
            if split != "test":
                raise ValueError("HumanEval has only a test split")
            rows = humaneval_rows()
            if num is not None and num < len(rows):
                rows = random.Random(seed).sample(rows, num)
            return rows
        return stdio_rows(split, 100 if num is None else num, seed, self.tests_per_problem, self.families)

    def for_evaluation(self) -> CodeTask:
        """This task with every test run (no `max_tests`): what evaluation should score with."""
        evaluation = copy.copy(self)
        evaluation.max_tests = None
        return evaluation

    def prompt(self, row: dict) -> str:
        """The question; with MBPP-style `asserts`, followed by them (as MBPP's prompt shows its tests: they name the
        function and its signature), unless the question already holds them."""
        asserts = asserts_of(row)
        if not asserts or all(statement.strip() in row["question"] for statement in asserts):
            return row["question"]
        return row["question"].rstrip() + "\nYour code should pass these tests:\n\n" + "\n".join(
            statement.strip() for statement in asserts)

    def gold_completion(self, row: dict) -> str:
        """The row's reference program, formatted as an answer (an SFT label; check it with rcl.tasks.labels)."""
        return f"```{self.language}\n{row['solution']}```\n"

    def reward(self, passed: int, total: int) -> float:
        perfect = total > 0 and passed == total
        if self.reward_mode == "binary":
            return float(perfect)
        return passed / total * self.base_weight + (self.perfect_weight if perfect else 0.0)

    def score(self, completion: str, row: dict) -> Score:
        try:
            language = row.get("language") or self.language
            spec = self.sandbox_config.language(language)
            asserts = asserts_of(row)
            entry_point = row.get("entry_point") or called_first(asserts or [])
            # the function under test, when there is one: a later "example usage" block is not the solution
            prefer = (lambda block: defines(block, entry_point)) if entry_point and language == "python" else None
            code = extract_code(completion, [language, *spec.fence_tags], prefer)
            tests = tests_of(row)
            if tests is not None:
                if not tests:
                    return infra_score("the row has no tests")
                cases = tests if self.max_tests is None else tests[: self.max_tests]
                results = self.sandbox.run_tests(code, cases, language, self.float_tolerance) if code else []
                total = len(cases)
            elif row.get("test") and row.get("entry_point"):
                if language != "python":
                    return infra_score("assert-style tests are Python only")
                prompt = row.get("prompt", "")
                # a whole function gets the prompt's imports and helpers; a body only continues the prompt
                program = prompt_context(prompt, row["entry_point"]) + code if defines(code, row["entry_point"]) \
                    else continuation(prompt, code)
                results = [self.sandbox.run_assert(program, row["test"], row["entry_point"])] if code else []
                total = 1
            elif asserts is not None:
                if language != "python" or not entry_point:
                    return infra_score("assert lists are Python only, and must call the function under test")
                cases = asserts if self.max_tests is None else asserts[: self.max_tests]
                setup = row.get("test_setup_code") or ""
                tests = [assert_check(statement, setup) for statement in cases]
                results = self.sandbox.run_asserts(code, tests, entry_point) if code else []
                total = len(cases)
            else:
                return infra_score("the row has none of `tests`, `test` + `entry_point`, or `asserts`")
        except (OSError, ValueError) as error:
            return infra_score(f"{type(error).__name__}: {error}")
        return self._score(results, total)

    def _score(self, results: list[RunResult], total: int) -> Score:
        if not results:
            details = {"passed": 0, "total": total, "outcome": "no_answer", "outcomes": {}, "message": "no code"}
            return Score(self.reward(0, total), False, details)
        outcomes = Counter(result.outcome for result in results)
        if outcomes["infra_error"]:
            first = next(result for result in results if result.outcome == "infra_error")
            return infra_score(first.error, total)
        passed = outcomes["pass"]
        failed = [result for result in results if result.outcome != "pass"]
        details = {
            "passed": passed,
            "total": total,
            "outcome": failed[0].outcome if failed else "pass",
            "outcomes": dict(outcomes),
            "message": failed[0].error[:500] if failed else "",
        }
        return Score(self.reward(passed, total), passed == total, details)
