"""The study's analyses, as pure functions over the files the arms and the evaluation wrote: learning curves on a
common budget axis, sample efficiency, solution diversity and error patterns."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def sft_curves(metrics_csv: Path, samples_per_step: int) -> dict[str, list[tuple[int, float, float]]]:
    """From the SFT arm's csv/metrics.csv: `loss` (train/loss) and `accuracy` (val/exact_match, greedy on the
    held-out rows), each as (step, budget in training samples, value)."""
    out: dict[str, list] = {"loss": [], "accuracy": []}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            step = int(row["step"]) if row.get("step") else None
            if step is None:
                continue
            for key, column in (("loss", "train/loss"), ("accuracy", "val/exact_match")):
                if row.get(column):
                    # Lightning's csv `step` is the optimizer steps done minus one (the sanity pass is not logged).
                    out[key].append((step + 1, (step + 1) * samples_per_step, float(row[column])))
    return out


def rl_curves(history: Sequence[dict], samples_per_step: int) -> dict[str, list[tuple[int, float, float]]]:
    """From the RLVR arm's history.jsonl: `reward`, `kl` (when logged) and `accuracy` (eval/accuracy, greedy on the
    held-out prompts), each as (step, budget in training samples, value)."""
    out: dict[str, list] = {"reward": [], "kl": [], "accuracy": []}
    for h in history:
        step = int(h.get("step", 0))
        for key, field in (("reward", "reward"), ("kl", "kl"), ("accuracy", "eval/accuracy")):
            if field in h and h[field] is not None:
                out[key].append((step, step * samples_per_step, float(h[field])))
    return out


def sft_tokens(metrics_csv: Path) -> dict[str, float | None]:
    """From the SFT arm's csv/metrics.csv, the running totals SFTModule logs (their largest value: the run's):
    `tokens_processed` (non-padding tokens of the training batches) and `loss_tokens` (the labelled ones); None when
    the log has no such column."""
    out: dict[str, float | None] = {"tokens_processed": None, "loss_tokens": None}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            for key, column in (("tokens_processed", "train/tokens_seen"), ("loss_tokens", "train/loss_tokens_seen")):
                if row.get(column):
                    out[key] = max(out[key] or 0.0, float(row[column]))
    return out


def rl_tokens(history: Sequence[dict]) -> dict[str, float]:
    """From the RLVR arm's history.jsonl (every step logged), summed over its training steps: `tokens_processed`
    (prompt + completion tokens through the policy, `train/tokens`), `loss_tokens` (the completions,
    `train/completion_tokens`) and `generated_tokens` (sampled, the `tokens/*` sums)."""
    steps = [h for h in history if "reward" in h]
    return {"tokens_processed": sum(h.get("train/tokens", 0.0) for h in steps),
            "loss_tokens": sum(h.get("train/completion_tokens", 0.0) for h in steps),
            "generated_tokens": sum(v for h in steps for k, v in h.items() if k.startswith("tokens/"))}


def first_reaching(curve: Sequence[tuple[int, float, float]], target: float) -> float | None:
    """The smallest budget at which the curve's value is >= target (None if never)."""
    hits = [budget for _, budget, value in curve if value >= target]
    return min(hits) if hits else None


def entropy(counts: Sequence[int]) -> float:
    """Shannon entropy (nats) of the distribution with these counts."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c) if total else 0.0


def diversity(answers: dict[str, list], texts: dict[str, list]) -> dict[str, float]:
    """Per problem among its k samples: distinct final answers (an unreadable answer counts as one value),
    distinct texts, and the entropy of the answer distribution; means over problems."""
    ids = list(answers)
    if not ids:
        return {"problems": 0, "distinct_answers": math.nan, "distinct_texts": math.nan, "answer_entropy": math.nan}
    per = [(len(set(map(str, answers[i]))), len(set(texts.get(i, []))),
            entropy(list(Counter(map(str, answers[i])).values()))) for i in ids]
    return {"problems": len(ids), "samples_per_problem": sum(len(answers[i]) for i in ids) / len(ids),
            "distinct_answers": sum(p[0] for p in per) / len(per), "distinct_texts": sum(p[1] for p in per) / len(per),
            "answer_entropy": sum(p[2] for p in per) / len(per)}


def per_problem_accuracy(records: Sequence[dict]) -> dict[str, float]:
    by: dict[str, list] = {}
    for r in records:
        by.setdefault(r["row_id"], []).append(float(r["correct"]))
    return {k: sum(v) / len(v) for k, v in by.items()}


def error_patterns(a: dict[str, float], b: dict[str, float], threshold: float = 0.5) -> dict[str, list[str]]:
    """Problems one arm solves (per-problem accuracy >= threshold) and the other does not, over the problems both
    have: `a_only` and `b_only` row ids."""
    common = [i for i in a if i in b]
    return {"a_only": [i for i in common if a[i] >= threshold > b[i]],
            "b_only": [i for i in common if b[i] >= threshold > a[i]]}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max over seeds."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals)}
