"""A mixture of tasks (the Affine mix of SAT, abduction and deduction): each row names its task, and is scored by it.

Row fields: `task` (the name of one of the mixture's tasks) plus that task's own fields; the fields of the other tasks
are null. Score.details are the row's task's, plus `task`, so metrics can be split per task.
"""

from __future__ import annotations

import random
from typing import Any

from rcl.tasks.base import Score, Task, get_task, register_task


def per_task_sums(names: list[str], results: list[tuple[Score | None, float, float]]) -> dict[str, float]:
    """Sums for per-task metrics, one key set for every process (so they can be summed across processes):
    `tasks/<name>/count`, `.../correct` and `.../reward` over (score, correctness, reward) triples, by the score's
    details["task"]."""
    sums = {f"tasks/{name}/{key}": 0.0 for name in names for key in ("count", "correct", "reward")}
    for score, correct, reward in results:
        name = score.details.get("task") if score is not None else None
        if name in names:
            sums[f"tasks/{name}/count"] += 1.0
            sums[f"tasks/{name}/correct"] += correct
            sums[f"tasks/{name}/reward"] += reward
    return sums


def per_task_means(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    """`<prefix>tasks/<name>/accuracy` and `.../reward` from summed `per_task_sums` (tasks without rows left out)."""
    means = {}
    for key, count in sums.items():
        if key.endswith("/count") and count > 0:
            base = key[: -len("/count")]
            means[f"{prefix}{base}/accuracy"] = sums[f"{base}/correct"] / count
            means[f"{prefix}{base}/reward"] = sums[f"{base}/reward"] / count
    return means


@register_task("mixture")
class MixtureTask(Task):
    """Rows drawn from several tasks by weight; each completion scored by its row's task."""

    def __init__(self, tasks: dict[str, dict[str, Any]] | None = None, weights: dict[str, float] | None = None):
        """tasks: task name -> its keyword arguments (default: sat, abduction and deduction with their defaults).
        weights: task name -> share of the rows (default equal)."""
        specs = tasks if tasks is not None else {"sat": {}, "abduction": {}, "deduction": {}}
        if not specs:
            raise ValueError("a mixture needs at least one task")
        self.tasks: dict[str, Task] = {name: get_task(name, **(kwargs or {})) for name, kwargs in specs.items()}
        weights = weights or {name: 1.0 for name in self.tasks}
        if set(weights) != set(self.tasks) or any(w < 0 for w in weights.values()) or not sum(weights.values()):
            raise ValueError(f"weights must give each of {sorted(self.tasks)} a share >= 0, not all 0")
        self.weights = weights
        self.fields = tuple(dict.fromkeys(["task", *(f for task in self.tasks.values() for f in task.fields)]))

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        num = 100 if num is None else num
        rng = random.Random(f"mixture/{split}/{seed}")
        names = list(self.tasks)
        picks = rng.choices(names, weights=[self.weights[name] for name in names], k=num)
        pools = {name: iter(self.tasks[name].rows(split, picks.count(name), seed)) for name in names}
        rows = [{**next(pools[name]), "task": name} for name in picks]
        blank = dict.fromkeys(key for row in rows for key in row)  # every row has every column (null if not its own)
        return [{**blank, **row} for row in rows]

    @property
    def subtasks(self) -> list[str]:
        """The mixture's task names: what per-task metrics (`tasks/<name>/...`) are split by."""
        return list(self.tasks)

    def _task(self, row: dict) -> Task:
        name = row.get("task")
        if name not in self.tasks:
            raise ValueError(f"row task {name!r} is not in the mixture ({', '.join(self.tasks)})")
        return self.tasks[name]

    def prompt(self, row: dict) -> str:
        return self._task(row).prompt(row)

    def gold_completion(self, row: dict) -> str:
        return self._task(row).gold_completion(row)

    def score(self, completion: str, row: dict) -> Score:
        try:
            task = self._task(row)
        except ValueError as error:
            return Score(0.0, False, {"outcome": "infra_error", "error": str(error), "task": row.get("task")})
        score = task.score(completion, row)
        return Score(score.reward, score.correct, {**score.details, "task": row["task"]})

    def score_batch(self, completions: list[str], rows: list[dict]) -> list[Score]:
        """Each task's rows through its own `score_batch` when it has one (the sandboxed tasks run in parallel)."""
        out: list[Score | None] = [None] * len(rows)
        for name, task in self.tasks.items():
            index = [i for i, row in enumerate(rows) if row.get("task") == name]
            batch = getattr(task, "score_batch", None)
            own = [completions[i] for i in index], [rows[i] for i in index]
            scores = batch(*own) if batch and index else [task.score(c, r) for c, r in zip(*own)]
            for i, score in zip(index, scores):
                out[i] = Score(score.reward, score.correct, {**score.details, "task": name})
        return [score if score is not None else self.score(c, r) for score, c, r in zip(out, completions, rows)]
