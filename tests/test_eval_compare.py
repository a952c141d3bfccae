"""Pareto dominance, frontiers and deltas of rcl.eval.compare on small hand-made tables."""

import math

import pytest

from rcl.eval.compare import (
    TaskScore,
    beats,
    common_tasks,
    delta_interval,
    dominance_pairs,
    dominates,
    pareto_frontier,
    token_frontier,
)


def score(acc, n=100, half_width=0.05, tokens=math.nan):
    return TaskScore(acc, acc - half_width, acc + half_width, n, tokens)


def test_dominance_is_transitive_on_a_chain():
    a = {"x": score(0.8), "y": score(0.7)}
    b = {"x": score(0.6), "y": score(0.7)}
    c = {"x": score(0.5), "y": score(0.6)}
    assert dominates(a, b) and dominates(b, c) and dominates(a, c)
    assert not dominates(b, a) and not dominates(c, a)
    assert pareto_frontier({"a": a, "b": b, "c": c}) == ["a"]
    assert set(dominance_pairs({"a": a, "b": b, "c": c})) == {("a", "b"), ("b", "c"), ("a", "c")}


def test_ties_dominate_nothing():
    a = {"x": score(0.5), "y": score(0.6)}
    assert not dominates(a, dict(a))
    assert pareto_frontier({"a": a, "b": dict(a)}) == ["a", "b"]


def test_only_common_tasks_count():
    a = {"x": score(0.8), "only_a": score(0.1)}
    b = {"x": score(0.6), "only_b": score(0.9)}
    assert common_tasks(a, b) == ["x"]
    assert dominates(a, b) and not dominates(b, a)
    assert not dominates({"p": score(0.9)}, {"q": score(0.1)})  # no common task: no verdict


def test_tasks_with_too_few_samples_are_left_out():
    a = {"x": score(0.8, n=5), "y": score(0.5)}
    b = {"x": score(0.2), "y": score(0.5)}
    assert dominates(a, b)  # on x
    assert common_tasks(a, b, min_samples=10) == ["y"]
    assert not dominates(a, b, min_samples=10)  # x is left out, y is a tie
    assert not dominates({"x": score(0.9, n=3)}, {"x": score(0.1, n=3)}, min_samples=4)


def test_a_frontier_of_three_mutually_non_dominated_models():
    systems = {
        "math_expert": {"math": score(0.9), "code": score(0.2), "sat": score(0.5)},
        "code_expert": {"math": score(0.3), "code": score(0.8), "sat": score(0.5)},
        "generalist": {"math": score(0.6), "code": score(0.6), "sat": score(0.6)},
        "weak": {"math": score(0.3), "code": score(0.2), "sat": score(0.4)},
    }
    assert pareto_frontier(systems) == ["math_expert", "code_expert", "generalist"]
    for a in ("math_expert", "code_expert", "generalist"):
        for b in ("math_expert", "code_expert", "generalist"):
            assert not dominates(systems[a], systems[b])
        assert dominates(systems[a], systems["weak"])


def test_ci_aware_dominance_needs_separated_intervals():
    a = {"x": TaskScore(0.60, 0.55, 0.65, 100), "y": TaskScore(0.50, 0.45, 0.55, 100)}
    b = {"x": TaskScore(0.57, 0.52, 0.62, 100), "y": TaskScore(0.40, 0.35, 0.44, 100)}
    assert dominates(a, b)  # point estimates: higher on both
    assert beats(a["y"], b["y"], ci_aware=True) and not beats(a["x"], b["x"], ci_aware=True)
    assert dominates(a, b, ci_aware=True)  # y separates, x overlaps (no verdict either way)
    overlapping = {"x": TaskScore(0.58, 0.53, 0.63, 100), "y": TaskScore(0.48, 0.43, 0.53, 100)}
    assert dominates(a, overlapping) and not dominates(a, overlapping, ci_aware=True)
    assert pareto_frontier({"a": a, "o": overlapping}, ci_aware=True) == ["a", "o"]


def test_token_frontier():
    points = {"cheap": (0.5, 10.0), "mid": (0.7, 50.0), "costly": (0.8, 200.0), "wasteful": (0.6, 300.0),
              "same_as_mid": (0.7, 60.0), "undefined": (math.nan, 5.0)}
    assert token_frontier(points) == ["cheap", "mid", "costly"]


def test_delta_interval_from_summaries():
    a, b = TaskScore(0.6, 0.55, 0.65, 400), TaskScore(0.5, 0.45, 0.55, 400)
    d, low, high = delta_interval(a, b)
    assert d == pytest.approx(0.1)
    assert low < 0.1 < high and low > 0  # 400 samples each: an 80% interval of about +-0.045
    assert (d, low, high) == delta_interval(a, b)  # seeded
    d_small, low_small, high_small = delta_interval(TaskScore(0.6, 0, 1, 10), TaskScore(0.5, 0, 1, 10))
    assert high_small - low_small > high - low
