"""results.json: the statistics of every (model, task, protocol), under a versioned schema.

Schema version 1, top level:
- `schema_version` (1), `config` (the resolved recipe, API keys redacted), `git_sha` and `git_dirty`,
  `templates_sha256`, `rows_sha256` (task -> hash of its evaluated rows), `samples_file` (the scored per-sample
  JSONL, relative to results.json), `results`, `aggregates` and `paired_differences`.
- `results`: one entry per (model, task, protocol) with `model`, `task`, `protocol`, `n` (samples), `problems`,
  `accuracy`, `ci_low`, `ci_high`, `ci_level` (Jeffreys interval of the accuracy), `mean_score`, `score_ci_low`,
  `score_ci_high`, `std`, `median` (of the rewards), `success_rate` (share of non-zero rewards), `mean_tokens` (what
  the evaluated model generated per sample: the answer, or the teacher's completion), `completion_rate`, `pass_at_k`
  (k as a string -> value) and `pass_at_k_ci` (k -> [low, high], bootstrap over problems).
  For adaptive_teaching, `accuracy` is teacher + student, and the entry adds `student`, `baseline_accuracy`,
  `baseline_ci_low`, `baseline_ci_high`, `baseline_pass_at_k`, `with_teaching_accuracy`, `delta`, `delta_ci_low`,
  `delta_ci_high` (paired over problems), `ndr`, `ndr_ci_low`, `ndr_ci_high`, `tes`, `improvement_rate`,
  `degradation_rate`, `teaching_tokens_mean`.
- `aggregates`: per (model, protocol), accuracy and mean score weighted by samples per task, and the success rate
  over all its samples.
- `paired_differences`: per (task, protocol) with several models, each model minus the first listed one on the
  same problems, with a paired bootstrap interval.
Undefined values (an empty pass@k, TES with no teaching tokens) are null.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rcl.eval.args import EvalStats
from rcl.eval.stats import (
    Estimate,
    jeffreys_interval,
    paired_delta,
    pass_at_k_estimate,
    summarize,
    teaching_effect,
    tes,
    weighted_mean,
)

SCHEMA_VERSION = 1


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def clean(value: Any) -> Any:
    """NaN and infinities as null, recursively: results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return _finite(value)
    return value


def by_problem(records: Sequence[dict], field: str) -> dict[str, list]:
    """row id -> the field's values over that problem's samples, in sample order (rows in first-seen order)."""
    out: dict[str, list] = {}
    for r in sorted(records, key=lambda r: r["sample_index"]):
        out.setdefault(r["row_id"], []).append(r[field])
    return out


def _pass_at_k(groups: dict[str, list], ks: Sequence[int], stats: EvalStats) -> tuple[dict, dict]:
    counts = [(len(v), int(sum(v))) for v in groups.values()]
    values, intervals = {}, {}
    for k in ks:
        est = pass_at_k_estimate(counts, k, stats.ci_level, stats.bootstrap_resamples, stats.bootstrap_seed)
        values[str(k)] = est.value if est else None
        intervals[str(k)] = [est.low, est.high] if est else None
    return values, intervals


def entry(records: Sequence[dict], stats: EvalStats) -> dict:
    """The statistics of one (model, task, protocol) from its scored records."""
    first = records[0]
    summary = summarize([r["reward"] for r in records], [r["correct"] for r in records],
                        [r["tokens"] for r in records], stats.ci_level)
    correct = by_problem(records, "correct")
    pass_k, pass_k_ci = _pass_at_k(correct, stats.pass_k, stats)
    out = {
        "model": first["model"], "task": first["task"], "protocol": first["protocol"],
        "n": summary.n, "problems": len(correct),
        "accuracy": summary.accuracy, "ci_low": summary.ci_low, "ci_high": summary.ci_high, "ci_level": stats.ci_level,
        "mean_score": summary.mean_score, "score_ci_low": summary.score_ci_low, "score_ci_high": summary.score_ci_high,
        "std": summary.std, "median": summary.median, "success_rate": summary.success_rate,
        "mean_tokens": summary.mean_tokens, "completion_rate": float(np.mean([r["completed"] for r in records])),
        "pass_at_k": pass_k, "pass_at_k_ci": pass_k_ci,
    }
    if first["protocol"] == "adaptive_teaching":
        out.update(_teaching(records, correct, stats, out["completion_rate"]))
    return out


def _teaching(records: Sequence[dict], with_teaching: dict[str, list], stats: EvalStats, completion_rate: float
              ) -> dict:
    alone = by_problem(records, "baseline_correct")
    ids = list(with_teaching)
    effect = teaching_effect([alone[i] for i in ids], [with_teaching[i] for i in ids], stats.ci_level,
                             stats.bootstrap_resamples, stats.bootstrap_seed)
    base_n = sum(len(v) for v in alone.values())
    base_low, base_high = jeffreys_interval(sum(sum(v) for v in alone.values()), base_n, stats.ci_level)
    base_pass, _ = _pass_at_k(alone, stats.pass_k, stats)
    teaching_tokens = float(np.mean([r["teaching_tokens"] for r in records]))
    return {
        "student": records[0]["student"],
        "baseline_accuracy": effect.baseline_accuracy, "baseline_ci_low": base_low, "baseline_ci_high": base_high,
        "baseline_pass_at_k": base_pass,
        "with_teaching_accuracy": effect.with_teaching_accuracy,
        "delta": effect.delta.value, "delta_ci_low": effect.delta.low, "delta_ci_high": effect.delta.high,
        "ndr": effect.ndr.value, "ndr_ci_low": effect.ndr.low, "ndr_ci_high": effect.ndr.high,
        "tes": tes(effect.baseline_accuracy, effect.with_teaching_accuracy, completion_rate, teaching_tokens),
        "improvement_rate": effect.improvement_rate, "degradation_rate": effect.degradation_rate,
        "teaching_tokens_mean": teaching_tokens,
    }


def aggregates(entries: Sequence[dict], records: Sequence[dict]) -> list[dict]:
    out = []
    for model, protocol in dict.fromkeys((e["model"], e["protocol"]) for e in entries):
        mine = [e for e in entries if (e["model"], e["protocol"]) == (model, protocol)]
        weights = [e["n"] for e in mine]
        rewards = [r["reward"] for r in records if (r["model"], r["protocol"]) == (model, protocol)]
        out.append({
            "model": model, "protocol": protocol, "tasks": [e["task"] for e in mine], "n": sum(weights),
            "accuracy": weighted_mean([e["accuracy"] for e in mine], weights),
            "mean_score": weighted_mean([e["mean_score"] for e in mine], weights),
            "success_rate": float(np.mean([r != 0 for r in rewards])) if rewards else math.nan,
            "mean_tokens": weighted_mean([e["mean_tokens"] for e in mine], weights),
        })
    return out


def paired_differences(groups: dict[tuple[str, str, str], list[dict]], stats: EvalStats) -> list[dict]:
    """Within each (task, protocol): every later model minus the first, over the problems both have."""
    out = []
    for task, protocol in dict.fromkeys((t, p) for _, t, p in groups):
        models = [m for m, t, p in groups if (t, p) == (task, protocol)]
        reference = by_problem(groups[(models[0], task, protocol)], "correct")
        for model in models[1:]:
            other = by_problem(groups[(model, task, protocol)], "correct")
            common = [i for i in reference if i in other]
            est: Estimate = paired_delta([np.mean(other[i]) for i in common], [np.mean(reference[i]) for i in common],
                                         stats.ci_level, stats.bootstrap_resamples, stats.bootstrap_seed)
            out.append({"task": task, "protocol": protocol, "model": model, "reference": models[0],
                        "delta": est.value, "ci_low": est.low, "ci_high": est.high, "ci_level": stats.ci_level,
                        "problems": est.problems})
    return out


def group_records(records: Sequence[dict]) -> dict[tuple[str, str, str], list[dict]]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["task"], r["protocol"]), []).append(r)
    return groups


def git_state() -> tuple[str | None, bool | None]:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return sha.stdout.strip(), bool(dirty.stdout.strip())


def redact(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: ("<redacted>" if k == "api_key" and v else redact(v)) for k, v in config.items()}
    if isinstance(config, list):
        return [redact(v) for v in config]
    return config


def build_results(records: Sequence[dict], stats: EvalStats, config: dict, templates_sha256: str,
                  rows_sha256: dict[str, str], samples_file: str) -> dict:
    groups = group_records(records)
    entries = [entry(g, stats) for g in groups.values()]
    sha, dirty = git_state()
    return clean({
        "schema_version": SCHEMA_VERSION,
        "config": redact(config),
        "git_sha": sha,
        "git_dirty": dirty,
        "templates_sha256": templates_sha256,
        "rows_sha256": rows_sha256,
        "samples_file": samples_file,
        "stats": asdict(stats),
        "results": entries,
        "aggregates": aggregates(entries, records),
        "paired_differences": paired_differences(groups, stats),
    })
