"""Is held-out accuracy moving? One plain line after each RL evaluation: the mean of the last few evaluations
against the first one's interval, so a user sees a trend rather than one noisy number."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from rcl.eval.report import fmt

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
        parts.append(f"{_LABELS[key]} {trailing:.3f} (mean of the last {len(later)}) vs {fmt(first[key], low, high)} "
                     f"at step {first['step']}: {direction(trailing, low, high)}; "
                     f"best {best[key]:.3f} at step {best['step']}")
    return "held-out trend: " + "; ".join(parts) if parts else None


def room_warning(first: dict) -> str | None:
    """At the first evaluation this process runs in an adaptive-teaching run: a plain warning when the student alone
    is not below teacher + student by their intervals (the student's upper bound reaches the pair's lower bound).
    The adaptive reward then mostly punishes teaching (nearly every teaching falls short of the student's own
    baseline), and GRPO drives the teacher to teach less, which is how a too-strong student SFT showed up in the
    quickstart. None when teaching has room, or for direct."""
    alone, taught = "eval/baseline_accuracy", "eval/with_teaching_accuracy"
    if any(f"{k}_ci_low" not in first for k in (alone, taught)):
        return None
    if first[f"{alone}_ci_high"] < first[f"{taught}_ci_low"]:
        return None
    interval = lambda k: fmt(first[k], first[f"{k}_ci_low"], first[f"{k}_ci_high"])  # noqa: E731
    return (f"student alone {interval(alone)} is not below teacher + student {interval(taught)} at the first "
            "evaluation: teaching has no measured room, and the adaptive reward will mostly push the teacher to teach "
            "less. Check the student checkpoint (is it already solving these problems alone?) before reading this run "
            "as the teacher's learning.")
