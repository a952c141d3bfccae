"""The score phase: generation lines in, scored per-sample records out, through `rcl score`'s own scoring core
(`rcl.tasks.scoring.score_records`, which also refuses a verifier that mostly fails). Pure in its inputs, so scoring
the same files twice gives the same records.

A scored record (one line of `samples.jsonl`): `model`, `task`, `protocol`, `row_id`, `sample_index`, `seed`,
`correct`, `reward`, `tokens`, `completion_tokens`, `completed` (the answer ended by a stop and holds an answer the
task could score: the RL loop's completion rate) and the verifier's `details`; adaptive teaching adds `student`,
`baseline_correct`, `baseline_reward`, `baseline_details`, `baseline_tokens` and `teaching_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcl.metrics import completion_share
from rcl.tasks import Score
from rcl.tasks.scoring import score_records, write_atomically

LABELS = ("model", "task", "protocol", "row_id", "sample_index", "seed", "tokens", "completion_tokens")


def score_texts(task: Any, lines: Sequence[dict], field: str) -> list[dict]:
    """`rcl score` on the lines' `field` texts: each as its row's fields plus `completion`."""
    return score_records(task, [{**line["row"], "completion": line[field]} for line in lines])


def completed(scored: dict, finish_reason: str) -> float:
    has_answer = Score(scored["reward"], scored["correct"], scored["details"]).has_answer
    return completion_share([has_answer], [finish_reason == "stop"])


def score_lines(task: Any, lines: Sequence[dict]) -> list[dict]:
    lines = list(lines)
    answers = score_texts(task, lines, "completion")
    adaptive = [line for line in lines if line["protocol"] == "adaptive_teaching"]
    alone = iter(score_texts(task, adaptive, "baseline_completion"))
    records = []
    for line, scored in zip(lines, answers):
        record = {k: line[k] for k in LABELS}
        record.update(correct=bool(scored["correct"]), reward=float(scored["reward"]),
                      completed=completed(scored, line["finish_reason"]), details=scored["details"])
        if line["protocol"] == "adaptive_teaching":
            base = next(alone)
            record.update(
                student=line["student"], baseline_correct=bool(base["correct"]), baseline_reward=float(base["reward"]),
                baseline_details=base["details"], baseline_tokens=line["baseline_tokens"],
                teaching_tokens=line["teaching_tokens"],
            )
        records.append(record)
    return records


def write_records(path: Path, records: list[dict]) -> None:
    """Whole or not at all (`rcl score`'s atomic write)."""
    write_atomically(path, (json.dumps(r, sort_keys=True) + "\n" for r in records))
