"""rcl.eval.stats against scipy, brute-force enumeration and hand-computed values."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import beta

from rcl.eval.stats import (
    bootstrap_mean_interval,
    jeffreys_interval,
    paired_delta,
    pass_at_k,
    pass_at_k_estimate,
    summarize,
    teaching_effect,
    tes,
    weighted_mean,
)


@pytest.mark.parametrize("s,n", [(0, 10), (10, 10), (3, 10), (59, 200), (1, 1), (0, 1), (2.5, 4)])
@pytest.mark.parametrize("level", [0.8, 0.95])
def test_jeffreys_matches_scipy_beta_quantiles(s, n, level):
    tail = (1 - level) / 2
    low, high = jeffreys_interval(s, n, level)
    assert low == pytest.approx(beta.ppf(tail, 0.5 + s, 0.5 + n - s), abs=1e-12)
    assert high == pytest.approx(beta.ppf(1 - tail, 0.5 + s, 0.5 + n - s), abs=1e-12)
    assert 0 <= low < high <= 1


def test_jeffreys_edge_cases():
    assert jeffreys_interval(0, 0) == (0.0, 1.0)  # nothing observed
    low, high = jeffreys_interval(0, 10)
    assert low == pytest.approx(beta.ppf(0.1, 0.5, 10.5)) and low > 0  # the equal-tailed interval, not 0
    # successes are clamped into [0, n]: negative or > n sums of partial-credit scores
    assert jeffreys_interval(-3, 10) == jeffreys_interval(0, 10)
    assert jeffreys_interval(12.5, 10) == jeffreys_interval(10, 10)
    # far from the edges it is close to the normal approximation p +- z_0.9 * sqrt(p(1-p)/n)
    half = 1.2816 * math.sqrt(0.295 * 0.705 / 200)
    assert jeffreys_interval(59, 200) == pytest.approx((0.295 - half, 0.295 + half), abs=3e-3)
    with pytest.raises(ValueError):
        jeffreys_interval(1, 2, level=1.0)
    with pytest.raises(ValueError):
        jeffreys_interval(0, -1)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of the n samples that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_equals_enumeration_of_every_k_subset(n):
    for c in range(n + 1):
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        for k, value in enumerate(values, 1):
            assert value == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
        assert values[0] == pytest.approx(c / n)  # pass@1 is the accuracy
        assert all(a <= b + 1e-15 for a, b in zip(values, values[1:]))  # monotone in k


def test_pass_at_k_is_stable_where_binomials_overflow():
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    assert pass_at_k(5000, 0, 10) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_pass_at_k_estimate_uses_problems_with_enough_samples():
    counts = [(4, 1), (4, 0), (2, 2)]
    est = pass_at_k_estimate(counts, 4)
    assert est.problems == 2 and est.value == pytest.approx(0.5)  # (1 + 0) / 2; the 2-sample problem is left out
    est2 = pass_at_k_estimate(counts, 2)
    assert est2.problems == 3
    assert est2.value == pytest.approx((pass_at_k(4, 1, 2) + 0 + 1) / 3)
    assert est2.low <= est2.value <= est2.high
    assert pass_at_k_estimate([(1, 1)], 2) is None


def test_bootstrap_interval_is_seeded_and_sane():
    rng = np.random.default_rng(3)
    values = rng.random(50)
    a = bootstrap_mean_interval(values, 0.8, 1000, seed=1)
    assert a == bootstrap_mean_interval(values, 0.8, 1000, seed=1)
    assert a != bootstrap_mean_interval(values, 0.8, 1000, seed=2)
    assert a[0] < values.mean() < a[1]
    wide = bootstrap_mean_interval(values, 0.95, 1000, seed=1)
    assert wide[0] < a[0] and wide[1] > a[1]
    assert bootstrap_mean_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert all(math.isnan(x) for x in bootstrap_mean_interval([]))


def test_paired_delta_keeps_pairs_together():
    base = [0.0, 0.5, 1.0, 0.25]
    est = paired_delta([b + 0.25 for b in base], base)
    assert est.value == pytest.approx(0.25) and (est.low, est.high) == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError):
        paired_delta([1.0], [1.0, 0.0])


def test_teaching_effect_by_hand():
    # problem 1: alone 1/2, taught [1, 0]; problem 2: alone 0/2, taught [1, 1]; problem 3: alone 2/2, taught [0, 1]
    alone = [[True, False], [False, False], [True, True]]
    taught = [[True, False], [True, True], [False, True]]
    effect = teaching_effect(alone, taught, resamples=500)
    assert effect.baseline_accuracy == pytest.approx(0.5)
    assert effect.with_teaching_accuracy == pytest.approx(2 / 3)
    assert effect.delta.value == pytest.approx((0 + 1 - 0.5) / 3)
    # kept (>= p_base): p1 [1>=.5, 0<.5] -> 1/2; p2 [1, 1] -> 1; p3 [0<1, 1>=1] -> 1/2
    assert effect.ndr.value == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert effect.improvement_rate == pytest.approx((0.5 + 1 + 0) / 3)
    assert effect.degradation_rate == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert effect.ndr.low <= effect.ndr.value <= effect.ndr.high
    assert effect.delta.low <= effect.delta.value <= effect.delta.high


def test_tes_is_the_training_formula():
    assert tes(0.2, 0.5, 0.9, 30.0) == pytest.approx((0.5 - 0.2) * 0.9 / 0.03)
    assert math.isnan(tes(0.2, 0.5, 0.9, 0.0))


def test_summarize_by_hand():
    s = summarize([1.0, 0.0, 0.5, 1.0], [True, False, False, True], [3, 5, 4, 4])
    assert (s.n, s.accuracy, s.mean_score, s.success_rate, s.mean_tokens) == (4, 0.5, 0.625, 0.75, 4.0)
    assert s.median == 0.75 and s.std == pytest.approx(np.std([1, 0, 0.5, 1]))
    assert (s.ci_low, s.ci_high) == jeffreys_interval(2, 4)
    assert (s.score_ci_low, s.score_ci_high) == jeffreys_interval(2.5, 4)
    empty = summarize([], [], [])
    assert empty.n == 0 and math.isnan(empty.accuracy) and (empty.ci_low, empty.ci_high) == (0.0, 1.0)


def test_weighted_mean_weighs_by_samples():
    assert weighted_mean([0.5, 1.0], [300, 100]) == pytest.approx(0.625)
    assert weighted_mean([math.nan, 1.0], [5, 1]) == 1.0
    assert math.isnan(weighted_mean([], []))
