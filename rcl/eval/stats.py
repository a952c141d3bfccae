"""The statistics of an evaluation, as small pure functions over per-sample scores and per-problem groups.

- Rates get an equal-tailed Bayesian interval under Jeffreys' prior, Beta(1/2, 1/2): after s successes in n trials
  the posterior is Beta(1/2 + s, 1/2 + n - s). Its quantiles come from `scipy.stats.beta`.
- Quantities over problems with several samples each (pass@k, the paired teaching effect, NDR) get a percentile
  bootstrap over problems (`scipy.stats.bootstrap`, seeded): samples of one problem are correlated, so resampling
  problems rather than samples keeps the interval honest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

DEFAULT_LEVEL = 0.8
"""The 10th-90th percentile: Affine's per-environment interval."""


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"an interval level must lie in (0, 1), got {level}")


def jeffreys_interval(successes: float, n: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Equal-tailed interval of a success rate: the (1 - level)/2 and (1 + level)/2 quantiles of
    Beta(1/2 + s, 1/2 + n - s), with s = `successes` clamped to [0, n] (scores may be partial credit, or negative).

    n = 0 gives (0, 1): nothing was observed, so every rate is possible. At s = 0 (or n) the interval is the
    posterior's central mass, so it lies just above 0 (below 1) and does not contain the observed share.
    """
    _check_level(level)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return 0.0, 1.0
    s = min(max(float(successes), 0.0), float(n))
    tail = (1 - level) / 2
    low, high = stats.beta.ppf([tail, 1 - tail], 0.5 + s, 0.5 + n - s)
    return float(low), float(high)


def interval_metrics(name: str, successes: float, n: int, level: float = DEFAULT_LEVEL) -> dict[str, float]:
    """`{name}_ci_low` and `{name}_ci_high`: the Jeffreys interval as logged metrics (the RL loop's `eval/*`)."""
    low, high = jeffreys_interval(successes, n, level)
    return {f"{name}_ci_low": low, f"{name}_ci_high": high}


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with c correct out of n samples, 1 - C(n-c, k)/C(n, k), as the product
    1 - prod_{i = n-c+1}^{n} (1 - k/i), which never forms the (huge) binomial coefficients."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k samples and k >= 1, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def bootstrap_mean_interval(
    values: Sequence[float], level: float = DEFAULT_LEVEL, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` (one value per problem). Seeded, so the same values
    always give the same interval. One value gives a point; none gives NaNs."""
    _check_level(level)
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    if data.size == 1 or np.all(data == data[0]):
        return float(data[0]), float(data[0])
    result = stats.bootstrap(
        (data,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile", vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval, and how many problems it rests on."""

    value: float
    low: float
    high: float
    problems: int


def pass_at_k_estimate(
    counts: Sequence[tuple[int, int]], k: int, level: float = DEFAULT_LEVEL, resamples: int = 2000, seed: int = 0
) -> Estimate | None:
    """Mean pass@k over the problems with at least k samples (`counts` holds (n, c) per problem), with a bootstrap
    interval over those problems; None when no problem has k samples."""
    values = [pass_at_k(n, c, k) for n, c in counts if n >= k]
    if not values:
        return None
    low, high = bootstrap_mean_interval(values, level, resamples, seed)
    return Estimate(float(np.mean(values)), low, high, len(values))


def paired_delta(
    treated: Sequence[float], control: Sequence[float], level: float = DEFAULT_LEVEL, resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Mean of treated - control over the same problems (one per-problem accuracy each, in the same order), with a
    bootstrap interval that resamples problems, so each problem's pair stays together."""
    if len(treated) != len(control):
        raise ValueError(f"paired values need equal lengths, got {len(treated)} and {len(control)}")
    diff = np.asarray(treated, dtype=float) - np.asarray(control, dtype=float)
    low, high = bootstrap_mean_interval(diff, level, resamples, seed)
    return Estimate(float(diff.mean()) if diff.size else math.nan, low, high, int(diff.size))


@dataclass(frozen=True)
class TeachingEffect:
    """Student alone against teacher + student on the same problems."""

    baseline_accuracy: float
    with_teaching_accuracy: float
    delta: Estimate
    ndr: Estimate
    improvement_rate: float
    degradation_rate: float


def teaching_effect(
    baseline: Sequence[Sequence[bool]], with_teaching: Sequence[Sequence[bool]], level: float = DEFAULT_LEVEL,
    resamples: int = 2000, seed: int = 0,
) -> TeachingEffect:
    """Per problem: the student's correctness alone (`baseline[i]`, its samples) and with each teaching
    (`with_teaching[i]`, one student answer per teaching).

    An interaction is one teaching: it is non-degrading when its correctness is >= the problem's baseline accuracy,
    improving when >, degrading when < (the RL loop's NDR with m = 1). Accuracies are means over problems of the
    per-problem accuracies, so every problem weighs the same, and the bootstrap resamples problems.
    """
    if len(baseline) != len(with_teaching):
        raise ValueError(f"{len(baseline)} baseline problems but {len(with_teaching)} with teaching")
    if any(not b or not w for b, w in zip(baseline, with_teaching)):
        raise ValueError("every problem needs at least one sample alone and one with teaching")
    p_base = np.array([np.mean(b) for b in baseline], dtype=float)
    p_with = np.array([np.mean(w) for w in with_teaching], dtype=float)
    kept = [np.mean(np.asarray(w, dtype=float) >= p) for w, p in zip(with_teaching, p_base)]
    improved = [np.mean(np.asarray(w, dtype=float) > p) for w, p in zip(with_teaching, p_base)]
    degraded = [np.mean(np.asarray(w, dtype=float) < p) for w, p in zip(with_teaching, p_base)]
    ndr_low, ndr_high = bootstrap_mean_interval(kept, level, resamples, seed)
    return TeachingEffect(
        baseline_accuracy=float(p_base.mean()),
        with_teaching_accuracy=float(p_with.mean()),
        delta=paired_delta(p_with, p_base, level, resamples, seed),
        ndr=Estimate(float(np.mean(kept)), ndr_low, ndr_high, len(kept)),
        improvement_rate=float(np.mean(improved)),
        degradation_rate=float(np.mean(degraded)),
    )


def tes(baseline_accuracy: float, with_teaching_accuracy: float, completion_rate: float,
        teaching_tokens_mean: float) -> float:
    """TES (see rcl.metrics.teaching_efficiency_score, the training metric this is the float form of)."""
    import torch

    from rcl.metrics import teaching_efficiency_score

    as_tensor = lambda x: torch.tensor(float(x), dtype=torch.float64)  # noqa: E731
    return float(teaching_efficiency_score(as_tensor(baseline_accuracy), as_tensor(with_teaching_accuracy),
                                           as_tensor(completion_rate), as_tensor(teaching_tokens_mean)))


@dataclass(frozen=True)
class ScoreSummary:
    """One (model, task, protocol) over its samples."""

    n: int
    accuracy: float
    """Share of samples judged correct (NaN for n = 0)."""
    ci_low: float
    ci_high: float
    mean_score: float
    """Mean reward (partial credit counts)."""
    score_ci_low: float
    score_ci_high: float
    std: float
    """Standard deviation of the rewards."""
    median: float
    success_rate: float
    """Share of non-zero rewards."""
    mean_tokens: float


def summarize(rewards: Sequence[float], correct: Sequence[bool], tokens: Sequence[int],
              level: float = DEFAULT_LEVEL) -> ScoreSummary:
    """Per-sample statistics; intervals are Jeffreys intervals over the samples (accuracy from `correct`, mean score
    from the rewards clamped into [0, n] in sum)."""
    n = len(rewards)
    if len(correct) != n or len(tokens) != n:
        raise ValueError(f"{n} rewards, {len(correct)} correctness flags and {len(tokens)} token counts")
    r = np.asarray(rewards, dtype=float)
    c = np.asarray(correct, dtype=float)
    nan = math.nan
    ci = jeffreys_interval(c.sum(), n, level)
    score_ci = jeffreys_interval(r.sum(), n, level)
    return ScoreSummary(
        n=n,
        accuracy=float(c.mean()) if n else nan,
        ci_low=ci[0],
        ci_high=ci[1],
        mean_score=float(r.mean()) if n else nan,
        score_ci_low=score_ci[0],
        score_ci_high=score_ci[1],
        std=float(r.std()) if n else nan,
        median=float(np.median(r)) if n else nan,
        success_rate=float(np.mean(r != 0)) if n else nan,
        mean_tokens=float(np.mean(tokens)) if n else nan,
    )


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Mean of `values` weighted by `weights` (samples per task); NaN values are left out."""
    pairs = [(v, w) for v, w in zip(values, weights) if not math.isnan(v) and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else math.nan
