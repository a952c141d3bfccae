"""Pluggable rewards. A reward maps a list of rollout samples to one float per sample; rewards are registered by name
so a recipe can pick and weight them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from rcl.prompts import TEACHING_RE, THINKING_RE
from rcl.tasks.base import Score


@dataclass
class RolloutSample:
    """One policy completion and what the student did with it."""

    question: str
    ground_truth: str
    completion: str
    """The policy's decoded completion."""
    completion_tokens: int
    teaching: str | None = None
    """What the student was shown (adaptive protocol only, as for all fields below)."""
    teaching_tokens: int | None = None
    has_teaching_tags: bool | None = None
    baseline_correct: list[bool] | None = None
    """Correctness of k student samples without teaching; shared by the whole group of the question."""
    with_teaching_correct: list[bool] | None = None
    """Correctness of m student samples given this completion's teaching."""
    score: Score | None = None
    """The task's score of `completion` as an answer (direct protocol only): the correctness signal."""


RewardFn = Callable[[list[RolloutSample]], list[float]]
_REGISTRY: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    """Class (or factory) decorator: `get_reward(name, **kwargs)` will build it with those kwargs."""

    def decorator(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        if name in _REGISTRY:
            raise ValueError(f"a reward named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def get_reward(name: str, **kwargs) -> RewardFn:
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}")
    return _REGISTRY[name](**kwargs)


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def combine_rewards(
    samples: list[RolloutSample], rewards: dict[str, RewardFn], weights: dict[str, float]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the rewards (a reward without a weight gets 1.0, as in TRL). Returns `(total[N],
    per_reward)`, where `per_reward[name]` holds the unweighted values for logging `rewards/<name>/mean`."""
    unknown = sorted(set(weights) - set(rewards))
    if unknown:
        raise ValueError(f"weights given for rewards that are not used: {', '.join(unknown)}")
    total = torch.zeros(len(samples))
    per_reward: dict[str, Tensor] = {}
    for name, reward in rewards.items():
        values = reward(samples)
        if len(values) != len(samples):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(samples)} samples")
        per_reward[name] = torch.tensor(values, dtype=torch.float32)
        total += weights.get(name, 1.0) * per_reward[name]
    return total, per_reward


def _share(values: list[bool] | None, field: str) -> float:
    if not values:
        raise ValueError(f"adaptive_teaching needs a non-empty RolloutSample.{field}")
    return sum(values) / len(values)


@register_reward("adaptive_teaching")
class AdaptiveTeachingReward:
    """Reward the teacher by the student's improvement over its own baseline.

    With p_base = share of the k baseline samples that are correct, p_with = share of the m samples with this teaching
    that are correct, delta = p_with - p_base and the efficiency bonus eps = 100 / (100 + L) for L teaching tokens:

    - delta > 0 (teaching fixed something): delta * (1 + w * eps)
    - delta == 0 and p_with > 0 (kept correct): 0.5 * (1 + w * eps) * p_with
    - p_with == p_base == 0 (both wrong): 0
    - delta < 0 (degradation): -degradation_penalty_multiplier * |delta|

    With k = m = 1 this is exactly the original code's reward (delta in {-1, 0, 1}; the original ignored its
    configured degradation penalty, which `degradation_penalty_multiplier=0` reproduces). For k, m > 1 the cases are
    kept as they were, so they are not continuous: going from p_base = 0.9 to p_with = 1.0 earns 0.1 * (1 + w * eps),
    less than keeping 1.0 at 1.0 (0.5 * (1 + w * eps)). Within one group (one shared p_base) the reward can then rank
    a worse teaching higher when p_base < p_with < 1.5 * p_base can happen and so can p_with = p_base: with k = m = 4,
    p_base 0.75 kept earns 0.375 * (1 + w * eps), p_with 1.0 only 0.25 * (1 + w * eps). The shipped recipes (k = 4 with
    m = 1 or 2) cannot meet both conditions, so their group ranking is monotone in p_with.

    Missing `<teaching>` tags (`has_teaching_tags is False`): the reward is `missing_tags_reward` when that is not
    None (a fixed penalty, default 0); when it is None the formula applies to whatever the student was shown.
    """

    def __init__(
        self,
        efficiency_weight: float = 1.0,
        degradation_penalty_multiplier: float = 0.0,
        missing_tags_reward: float | None = 0.0,
    ) -> None:
        self.efficiency_weight = efficiency_weight
        self.degradation_penalty_multiplier = degradation_penalty_multiplier
        self.missing_tags_reward = missing_tags_reward

    def __call__(self, samples: list[RolloutSample]) -> list[float]:
        return [self.score(sample) for sample in samples]

    def score(self, sample: RolloutSample) -> float:
        if sample.has_teaching_tags is False and self.missing_tags_reward is not None:
            return float(self.missing_tags_reward)
        if sample.teaching_tokens is None:
            raise ValueError("adaptive_teaching needs RolloutSample.teaching_tokens")
        p_base = _share(sample.baseline_correct, "baseline_correct")
        p_with = _share(sample.with_teaching_correct, "with_teaching_correct")
        delta = p_with - p_base
        bonus = 1.0 + self.efficiency_weight * 100.0 / (100.0 + sample.teaching_tokens)
        if delta > 0:
            return delta * bonus
        if delta < 0:
            return -self.degradation_penalty_multiplier * abs(delta)
        return 0.5 * bonus * p_with


def teaching_reward_inversions(baseline_samples: int, student_samples: int) -> list[tuple[Fraction, Fraction]]:
    """Where `AdaptiveTeachingReward` ranks a better teaching lower inside one group (same p_base, same teaching
    length): the pairs (p_base, p_with) with p_base < p_with < 1.5 * p_base, when p_with = p_base can also happen.
    Keeping p_base earns 0.5 * p_base * bonus, raising it to p_with only (p_with - p_base) * bonus. Empty when
    the group ranking is monotone in p_with for k = `baseline_samples` and m = `student_samples`."""
    k, m = baseline_samples, student_samples
    reachable = {Fraction(j, m) for j in range(m + 1)}
    return [(Fraction(i, k), p_with) for i in range(1, k + 1) if Fraction(i, k) in reachable
            for p_with in sorted(reachable) if Fraction(i, k) < p_with < Fraction(3, 2) * Fraction(i, k)]


def _task_score(sample: RolloutSample, reward: str) -> Score:
    if sample.score is None:
        raise ValueError(f"the {reward} reward scores the policy's own answer with the task, which only the direct "
                         "protocol does (RolloutSample.score is None)")
    return sample.score


@register_reward("correctness")
class CorrectnessReward:
    """The task's reward for the policy's answer (direct protocol): 1.0 for a right math answer, the share of tests
    passed for code, ... as the task's `score` says (`rcl.tasks`)."""

    def __call__(self, samples: list[RolloutSample]) -> list[float]:
        return [_task_score(sample, "correctness").reward for sample in samples]


@register_reward("format")
class FormatReward:
    """1.0 when the completion follows the task's reasoning format (`task.kwargs.format`), else 0.0. Logged as
    `rewards/format/mean`, never as accuracy."""

    def __call__(self, samples: list[RolloutSample]) -> list[float]:
        values = []
        for sample in samples:
            details = _task_score(sample, "format").details
            if "format_ok" not in details:
                raise ValueError("the format reward needs a task with a reasoning format: set task.kwargs.format "
                                 "(reasoning_answer, think or think_answer)")
            values.append(float(details["format_ok"]))
        return values


@register_reward("teaching_format")
class TeachingFormatReward:
    """1.0 when the completion has a closed <thinking> block and a closed <teaching> block, else 0.0."""

    def __call__(self, samples: list[RolloutSample]) -> list[float]:
        return [
            float(bool(THINKING_RE.search(sample.completion) and TEACHING_RE.search(sample.completion)))
            for sample in samples
        ]


@register_reward("teaching_correctness")
class TeachingCorrectnessReward:
    """1.0 when the teaching states the problem's step right, as the task can check it (the synthetic additions'
    ones digits, sum and carry, `rcl.tasks.teaching_check`), else 0.0. A noiseless auxiliary signal for the adaptive
    protocol: it does not depend on the student's sampling. A question it cannot check scores 0.0 for every teaching
    of its group, which leaves the group's advantages as the other rewards make them."""

    def __call__(self, samples: list[RolloutSample]) -> list[float]:
        from rcl.tasks.teaching_check import teaching_is_correct

        values = []
        for sample in samples:
            if sample.teaching is None:
                raise ValueError("teaching_correctness scores teachings, which only the adaptive protocol has")
            values.append(float(bool(teaching_is_correct(sample.question, sample.teaching))))
        return values
