import itertools

import pytest
import torch

from rcl import rewards
from rcl.rewards import (
    AdaptiveTeachingReward,
    CorrectnessReward,
    FormatReward,
    RolloutSample,
    TeachingFormatReward,
    available_rewards,
    combine_rewards,
    get_reward,
    register_reward,
)
from rcl.tasks import get_task


def sample(baseline, with_teaching, teaching_tokens=100, has_tags=True, completion="", ground_truth="4", task=None):
    """A rollout sample; with `task`, scored by it as the direct protocol does."""
    return RolloutSample(
        question="2 + 2?",
        ground_truth=ground_truth,
        completion=completion,
        completion_tokens=teaching_tokens,
        teaching="guidance",
        teaching_tokens=teaching_tokens,
        has_teaching_tags=has_tags,
        baseline_correct=baseline,
        with_teaching_correct=with_teaching,
        score=task.score(completion, {"ground_truth": ground_truth}) if task is not None else None,
    )


MATH = get_task("math")


def original_reward(with_correct: bool, baseline_correct: bool, length: int, w: float) -> float:
    """The original code's four cases (original-rcl.md section 2), restated literally."""
    delta = int(with_correct) - int(baseline_correct)
    efficiency = 100 / (100 + length)
    if delta < 0:
        return 0.0
    if delta == 0:
        return 0.5 * (1 + w * efficiency) if with_correct else 0.0
    return delta * (1 + w * efficiency)


@pytest.mark.parametrize(
    ("with_correct", "baseline_correct", "length", "w", "has_tags"),
    list(itertools.product([True, False], [True, False], [0, 50, 100, 300], [1.0, 0.5], [True, False])),
)
def test_parity_with_original_when_k_and_m_are_one(with_correct, baseline_correct, length, w, has_tags):
    # the original scored untagged completions with the formula too: missing_tags_reward=None
    reward = AdaptiveTeachingReward(efficiency_weight=w, missing_tags_reward=None)
    got = reward([sample([baseline_correct], [with_correct], length, has_tags)])[0]
    assert got == pytest.approx(original_reward(with_correct, baseline_correct, length, w))


def test_documented_values_at_100_tokens():
    # eps = 100 / 200 = .5 -> improvement 1 * 1.5, maintained .5 * 1.5
    reward = AdaptiveTeachingReward()
    cases = [([False], [True]), ([True], [True]), ([False], [False]), ([True], [False])]
    assert reward([sample(base, with_) for base, with_ in cases]) == [1.5, 0.75, 0.0, 0.0]


def test_generalised_improvement_and_efficiency_weight():
    # p_base 1/4, p_with 2/4 -> delta .25; L = 300 -> eps = .25
    s = sample([True, False, False, False], [True, True, False, False], teaching_tokens=300)
    assert AdaptiveTeachingReward()([s]) == [pytest.approx(0.25 * 1.25)]
    assert AdaptiveTeachingReward(efficiency_weight=2.0)([s]) == [pytest.approx(0.25 * 1.5)]
    assert AdaptiveTeachingReward(efficiency_weight=0.0)([s]) == [pytest.approx(0.25)]


def test_generalised_maintained_scales_with_p_with():
    # delta 0, p_with .5, L = 100 -> .5 * 1.5 * .5
    s = sample([True, False], [False, True, True, False])
    assert AdaptiveTeachingReward()([s]) == [pytest.approx(0.375)]


def test_degradation_penalty_multiplier():
    # p_base 1, p_with .5 -> delta -.5
    s = sample([True, True], [True, False])
    assert AdaptiveTeachingReward()([s]) == [0.0]  # the original's behaviour
    assert AdaptiveTeachingReward(degradation_penalty_multiplier=2.0)([s]) == [pytest.approx(-1.0)]


def test_missing_tags_reward():
    s = sample([False], [True], has_tags=False)  # would be an improvement worth 1.5
    assert AdaptiveTeachingReward()([s]) == [0.0]
    assert AdaptiveTeachingReward(missing_tags_reward=-0.5)([s]) == [-0.5]
    assert AdaptiveTeachingReward(missing_tags_reward=None)([s]) == [1.5]
    unknown = sample([False], [True], has_tags=None)  # tag status not reported: the formula applies
    assert AdaptiveTeachingReward()([unknown]) == [1.5]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"baseline_correct": None}, "baseline_correct"),
        ({"with_teaching_correct": []}, "with_teaching_correct"),
        ({"teaching_tokens": None}, "teaching_tokens"),
    ],
)
def test_adaptive_teaching_needs_its_fields(changes, message):
    s = sample([True], [True])
    for key, value in changes.items():
        setattr(s, key, value)
    with pytest.raises(ValueError, match=message):
        AdaptiveTeachingReward()([s])


def test_correctness_reward_is_the_tasks_reward():
    samples = [
        sample(None, None, completion="<solution>4</solution>", task=MATH),
        sample(None, None, completion="<solution>5</solution>", task=MATH),
        sample(None, None, completion="no answer", task=MATH),
        sample(None, None, completion="\\boxed{4}", ground_truth="", task=MATH),
    ]
    assert CorrectnessReward()(samples) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="only the direct protocol"):
        CorrectnessReward()([sample([True], [True], completion="<solution>4</solution>")])


def test_format_reward_reads_the_tasks_format_and_gating_zeroes_correctness():
    gated, additive = get_task("math", format="reasoning_answer"), get_task("math", format="reasoning_answer",
                                                                             format_mode="additive")
    completions = ["<reasoning>2+2</reasoning>\n<answer>4</answer>", "<reasoning>2+2</reasoning><answer>5</answer>",
                   "<solution>4</solution>", "<reasoning>unclosed<answer>4</answer>"]
    for task, correctness in ((gated, [1.0, 0.0, 0.0, 0.0]), (additive, [1.0, 0.0, 1.0, 1.0])):
        samples = [sample(None, None, completion=c, task=task) for c in completions]
        assert FormatReward()(samples) == [1.0, 1.0, 0.0, 0.0]
        assert CorrectnessReward()(samples) == correctness
    with pytest.raises(ValueError, match="set task.kwargs.format"):
        FormatReward()([sample(None, None, completion="<solution>4</solution>", task=MATH)])


def test_teaching_format_reward():
    completions = [
        "<thinking>d</thinking>\n<teaching>t</teaching>",
        "<teaching>t</teaching><thinking>d</thinking>",
        "<thinking>d</thinking>\n<teaching>t",  # unclosed teaching
        "<teaching>t</teaching>",
        "plain text",
    ]
    samples = [sample(None, None, completion=c) for c in completions]
    assert TeachingFormatReward()(samples) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_registry(monkeypatch):
    assert {"adaptive_teaching", "correctness", "format", "teaching_format"} <= set(available_rewards())
    built = get_reward("adaptive_teaching", efficiency_weight=0.25)
    assert isinstance(built, AdaptiveTeachingReward) and built.efficiency_weight == 0.25
    with pytest.raises(ValueError, match="unknown reward 'nope'.*correctness"):
        get_reward("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("correctness")(CorrectnessReward)

    monkeypatch.setattr(rewards, "_REGISTRY", dict(rewards._REGISTRY))

    @register_reward("length")
    def length_reward(scale: float = 1.0):
        return lambda samples: [scale * s.completion_tokens for s in samples]

    assert "length" in available_rewards()
    assert get_reward("length", scale=0.5)([sample(None, None, teaching_tokens=10)]) == [5.0]


def test_combine_rewards_weighted_sum_and_per_reward_values():
    samples = [
        sample(None, None, completion="<thinking>a</thinking><teaching>b</teaching> <solution>4</solution>", task=MATH),
        sample(None, None, completion="<solution>4</solution>", task=MATH),
        sample(None, None, completion="<solution>3</solution>", task=MATH),
    ]
    fns = {"correctness": CorrectnessReward(), "teaching_format": TeachingFormatReward()}
    total, per_reward = combine_rewards(samples, fns, {"teaching_format": 0.5})  # correctness defaults to 1.0
    torch.testing.assert_close(total, torch.tensor([1.5, 1.0, 0.0]))
    torch.testing.assert_close(per_reward["correctness"], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(per_reward["teaching_format"], torch.tensor([1.0, 0.0, 0.0]))


def test_combine_rewards_rejects_mismatches():
    samples = [sample([True], [True])]
    with pytest.raises(ValueError, match="not used: typo"):
        combine_rewards(samples, {"correctness": CorrectnessReward()}, {"typo": 1.0})
    with pytest.raises(ValueError, match="returned 2 values for 1 samples"):
        combine_rewards(samples, {"bad": lambda s: [0.0, 1.0]}, {})


def _group_rewards(k: int, m: int, p_base, tokens: int = 20) -> dict:
    from fractions import Fraction

    reward = AdaptiveTeachingReward(efficiency_weight=1.0, degradation_penalty_multiplier=1.0)
    base = [True] * int(p_base * k) + [False] * (k - int(p_base * k))
    out = {}
    for j in range(m + 1):
        sample = RolloutSample("q", "1", "c", 5, teaching="t", teaching_tokens=tokens, has_teaching_tags=True,
                               baseline_correct=base, with_teaching_correct=[True] * j + [False] * (m - j))
        out[Fraction(j, m)] = reward.score(sample)
    return out


def _brute_force_inversions(k: int, m: int) -> set:
    from fractions import Fraction

    found = set()
    for i in range(k + 1):
        rewards = _group_rewards(k, m, Fraction(i, k))
        for low in rewards:
            for high in rewards:
                if low < high and rewards[low] > rewards[high]:
                    found.add((Fraction(i, k), high))
    return found


@pytest.mark.parametrize("k, m", [(1, 1), (4, 1), (4, 2), (2, 2), (4, 4), (3, 2), (8, 4), (4, 8)])
def test_inversion_finder_agrees_with_brute_force_over_every_group(k, m):
    from rcl.rewards import teaching_reward_inversions

    assert set(teaching_reward_inversions(k, m)) == _brute_force_inversions(k, m)


def test_shipped_recipes_rank_teachings_monotonically_and_others_warn():
    """Every shipped adaptive recipe's (k, m): within a group the reward never decreases in p_with; (4, 4) can
    invert (p_base 0.75 kept earns 0.375 * bonus, p_with 1.0 only 0.25 * bonus), and a run with it is warned."""
    import warnings
    from pathlib import Path

    import yaml

    from rcl.rl.args import GRPOArgs, RewardArgs
    from rcl.rl.loop import warn_reward_inversions

    root = Path(__file__).resolve().parents[1] / "lightning_configs"
    checked = 0
    for path in sorted(root.glob("*.yaml")):
        grpo = (yaml.safe_load(path.read_text()) or {}).get("grpo")
        if not grpo or grpo.get("protocol") != "adaptive_teaching":
            continue
        k, m = grpo["baseline_samples"], grpo["student_samples"]
        assert _brute_force_inversions(k, m) == set(), path.name
        checked += 1
    assert checked >= 2
    adaptive = RewardArgs(functions={"adaptive_teaching": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_reward_inversions(GRPOArgs(protocol="adaptive_teaching", baseline_samples=4, student_samples=2),
                                      adaptive) == []
    with pytest.warns(UserWarning, match="rank a better teaching lower"):
        cases = warn_reward_inversions(GRPOArgs(protocol="adaptive_teaching", baseline_samples=4, student_samples=4),
                                       adaptive)
    assert cases and all(float(w) < 1.5 * float(b) for b, w in cases)
