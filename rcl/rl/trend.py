"""Is held-out accuracy moving? One plain line after each RL evaluation: the mean of the last few evaluations
against the first one's interval, so a user sees a trend rather than one noisy number."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

TREND_WINDOW = 3
"""Evaluations the trailing mean covers: enough to smooth one noisy evaluation, few enough to show a late fall."""

_LABELS = {"eval/with_teaching_accuracy": "teacher + student", "eval/accuracy": "accuracy", "eval/ndr": "NDR"}


def direction(trailing: float, low: float, high: float) -> str:
    """'rising' / 'falling' when the trailing mean leaves the start's interval [low, high], else no clear change."""
    if trailing > high:
        return "rising"
    if trailing < low:
        return "falling"
    return "no clear change"


def trend_line(evals: Sequence[dict], window: int = TREND_WINDOW) -> str | None:
    """For the evaluations so far (each a metrics dict with "step" and eval/* values and their _ci_low/_ci_high),
    how teacher + student accuracy (or the policy's, for direct) and NDR moved since the first; None before the
    second evaluation."""
    if len(evals) < 2:
        return None
    first, later = evals[0], evals[1:][-window:]
    parts = []
    for key in ("eval/with_teaching_accuracy", "eval/ndr") if "eval/with_teaching_accuracy" in first \
            else ("eval/accuracy",):
        if key not in first or f"{key}_ci_low" not in first or any(key not in e for e in later):
            continue
        trailing = statistics.fmean(e[key] for e in later)
        low, high = first[f"{key}_ci_low"], first[f"{key}_ci_high"]
        best = max(evals, key=lambda e: e[key])
        parts.append(f"{_LABELS[key]} {trailing:.3f} (mean of the last {len(later)}) vs {first[key]:.3f} "
                     f"[{low:.3f}, {high:.3f}] at step {first['step']}: {direction(trailing, low, high)}; "
                     f"best {best[key]:.3f} at step {best['step']}")
    return "held-out trend: " + "; ".join(parts) if parts else None
