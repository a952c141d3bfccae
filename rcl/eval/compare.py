"""Comparing evaluated systems: per-task deltas with intervals, Pareto dominance and frontiers.

A system is one (model, protocol) of a results file; its table maps each task to a `TaskScore`. Only tasks that both
systems have, each with at least `min_samples` samples, are compared.

- Plain dominance: A dominates B when A >= B on every common task and A > B on at least one.
- CI-aware dominance: on a task, X beats Y only when X's interval lies wholly above Y's (lower_X > upper_Y). A
  dominates B when B beats A on no common task and A beats B on at least one, so differences inside the noise never
  decide anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rcl.eval.stats import DEFAULT_LEVEL


@dataclass(frozen=True)
class TaskScore:
    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    """Samples behind the accuracy."""
    mean_tokens: float = math.nan


System = Mapping[str, TaskScore]
"""task -> score."""


def common_tasks(a: System, b: System, min_samples: int = 1) -> list[str]:
    """Tasks both systems have with at least `min_samples` samples each, sorted."""
    return sorted(t for t in set(a) & set(b) if a[t].n >= min_samples and b[t].n >= min_samples)


def beats(x: TaskScore, y: TaskScore, ci_aware: bool = False) -> bool:
    """Whether x is better than y on one task (CI-aware: x's lower bound above y's upper bound)."""
    return x.ci_low > y.ci_high if ci_aware else x.accuracy > y.accuracy


def dominates(a: System, b: System, min_samples: int = 1, ci_aware: bool = False) -> bool:
    """Whether `a` Pareto-dominates `b` on their common tasks (never, when they have none)."""
    tasks = common_tasks(a, b, min_samples)
    if not tasks:
        return False
    never_worse = all(not beats(b[t], a[t], ci_aware) for t in tasks)
    return never_worse and any(beats(a[t], b[t], ci_aware) for t in tasks)


def pareto_frontier(systems: Mapping[str, System], min_samples: int = 1, ci_aware: bool = False) -> list[str]:
    """The systems no other system dominates, in the given order."""
    return [
        name for name, table in systems.items()
        if not any(dominates(other, table, min_samples, ci_aware) for o, other in systems.items() if o != name)
    ]


def dominance_pairs(systems: Mapping[str, System], min_samples: int = 1, ci_aware: bool = False
                    ) -> list[tuple[str, str]]:
    """Every (A, B) with A dominating B."""
    return [(a, b) for a in systems for b in systems
            if a != b and dominates(systems[a], systems[b], min_samples, ci_aware)]


def token_frontier(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Accuracy against cost: `points` maps a system to (accuracy, mean tokens). A system is on the frontier when no
    other has accuracy >= and tokens <= with one of them strictly better. Sorted by tokens."""
    valid = {n: p for n, p in points.items() if not (math.isnan(p[0]) or math.isnan(p[1]))}

    def dominated(name: str) -> bool:
        acc, tok = valid[name]
        return any((a >= acc and t <= tok) and (a > acc or t < tok) for o, (a, t) in valid.items() if o != name)

    return sorted((n for n in valid if not dominated(n)), key=lambda n: (valid[n][1], -valid[n][0]))


def delta_interval(a: TaskScore, b: TaskScore, level: float = DEFAULT_LEVEL, draws: int = 20000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """a - b in accuracy, with the interval of the difference of the two independent Jeffreys posteriors
    (Monte Carlo, seeded). Summaries cannot pair problems, so for two runs on the same problems this is usually wider
    than the paired interval (results.json's `paired_differences` pair them)."""
    rng = np.random.default_rng(seed)

    def posterior(score: TaskScore) -> np.ndarray:
        s = min(max(score.accuracy * score.n, 0.0), float(score.n))
        return rng.beta(0.5 + s, 0.5 + score.n - s, size=draws)

    diff = posterior(a) - posterior(b)
    tail = (1 - level) / 2
    low, high = np.quantile(diff, [tail, 1 - tail])
    return a.accuracy - b.accuracy, float(low), float(high)
