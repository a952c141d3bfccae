"""The reward self-test: before training, every reward of the recipe scores canned completions of a few rows.

Canned completions per row:
- `empty`: "";
- `gold`: the task's `gold_completion(row)` (a right answer in the task's format);
- `wrong`: the gold completion of another row with another answer;
- `format_only`: the task's `format_only_completion(row)` (its output format, no right answer).

In the direct protocol each is the policy's answer. In adaptive teaching each non-empty one is the teaching, wrapped
in the teacher's `<thinking>`/`<teaching>` shape, and the simulated student answers with what it was taught, after
a baseline that answered nothing.

A recipe whose weighted total for `gold` is not above the one for `empty` cannot learn the task (a reward with the
wrong sign, a weight of 0, a task that cannot recognise its own gold answer): it fails before anything is loaded onto
a GPU. A `wrong` or `format_only` total at or above `gold` is a warning (a format bonus can make it so on purpose).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from rcl.prompts import extract_teaching, teacher_target
from rcl.rewards import RewardFn, RolloutSample, combine_rewards
from rcl.tasks.base import Task

KINDS = ("empty", "gold", "wrong", "format_only")


class RewardSelfTestError(ValueError):
    """The recipe's rewards do not prefer the gold completion to the empty one."""


def canned_completions(task: Task, rows: Sequence[dict]) -> dict[str, list[tuple[dict, str]]]:
    """(row, completion) pairs per kind; `wrong` pairs each row with the next row whose gold answer differs."""
    golds = [task.gold_completion(row) for row in rows]
    pairs: dict[str, list[tuple[dict, str]]] = {kind: [] for kind in KINDS}
    for i, row in enumerate(rows):
        pairs["empty"].append((row, ""))
        pairs["gold"].append((row, golds[i]))
        pairs["format_only"].append((row, task.format_only_completion(row)))
        other = next((golds[j] for j in [*range(i + 1, len(rows)), *range(i)]
                      if not task.score(golds[j], row).correct), None)
        if other is not None:
            pairs["wrong"].append((row, other))
    return pairs


def canned_sample(task: Task, row: dict, completion: str, protocol: str) -> RolloutSample:
    question, truth = task.prompt(row), row.get("ground_truth", "")
    if protocol == "direct":
        return RolloutSample(question, truth, completion, len(completion.split()), score=task.score(completion, row))
    teacher_completion = teacher_target("The student needs this.", completion) if completion else ""
    shown = extract_teaching(teacher_completion, "empty")
    return RolloutSample(
        question, truth, teacher_completion, len(teacher_completion.split()), teaching=shown.text,
        teaching_tokens=len(shown.text.split()), has_teaching_tags=shown.has_tags,
        baseline_correct=[task.score("", row).correct], with_teaching_correct=[task.score(shown.text, row).correct],
    )


def reward_self_test(
    task: Task, rewards: dict[str, RewardFn], weights: dict[str, float], rows: Sequence[dict], protocol: str
) -> dict[str, dict[str, float]]:
    """Mean reward per kind: {kind: {"total": ..., <reward name>: ...}}. Raises RewardSelfTestError when gold's total
    is not above empty's."""
    if not rows:
        raise RewardSelfTestError("the reward self-test needs at least one training row")
    table: dict[str, dict[str, float]] = {}
    for kind, pairs in canned_completions(task, rows).items():
        if not pairs:
            continue
        samples = [canned_sample(task, row, completion, protocol) for row, completion in pairs]
        total, per_reward = combine_rewards(samples, rewards, weights)
        table[kind] = {"total": total.mean().item(), **{name: v.mean().item() for name, v in per_reward.items()}}
    gold, empty = table["gold"], table["empty"]
    if gold["total"] <= empty["total"]:
        per = ", ".join(f"{name} {gold[name]:.3f} vs {empty[name]:.3f}" for name in rewards)
        raise RewardSelfTestError(
            f"reward self-test: the gold completion scores {gold['total']:.3f}, not more than the empty completion "
            f"({empty['total']:.3f}), so training could not learn task {task.name!r} (per reward, gold vs empty: "
            f"{per}). Check reward.functions (names, weights, signs) and the task (a gold completion: "
            f"{task.gold_completion(rows[0])!r})"
        )
    for kind in ("wrong", "format_only"):
        if kind in table and table[kind]["total"] >= gold["total"]:
            warnings.warn(f"reward self-test: a {kind} completion scores {table[kind]['total']:.3f}, at least the gold "
                          f"one ({gold['total']:.3f})", stacklevel=2)
    return table


def summary(table: dict[str, dict[str, float]]) -> str:
    return "reward self-test: " + ", ".join(f"{kind} {values['total']:.3f}" for kind, values in table.items())
