"""The score phase: generation lines in, scored per-sample records out. Pure in its inputs, so scoring the same
files twice gives the same records.

A scored record (one line of `samples.jsonl`): `model`, `task`, `protocol`, `row_id`, `sample_index`, `seed`,
`correct`, `reward`, `tokens`, `completion_tokens`, `completed` (the answer ended by a stop and has a parseable
answer: the RL loop's completion rate) and the verifier's `details`; adaptive teaching adds `student`,
`baseline_correct`, `baseline_reward`, `baseline_details`, `baseline_tokens` and `teaching_tokens`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rcl.metrics import completion_share
from rcl.tasks import Score


def score_completion(task: Any, completion: str, row: dict) -> Score:
    """One completion through the task's verifier."""
    return task.score(completion, row)


def score_lines(task: Any, lines: Iterable[dict]) -> list[dict]:
    records = []
    for line in lines:
        score = score_completion(task, line["completion"], line["row"])
        record = {k: line[k] for k in ("model", "task", "protocol", "row_id", "sample_index", "seed", "tokens",
                                        "completion_tokens")}
        record.update(
            correct=bool(score.correct), reward=float(score.reward),
            completed=completion_share([line["completion"]], [line["finish_reason"] == "stop"]),
            details=score.details,
        )
        if line["protocol"] == "adaptive_teaching":
            alone = score_completion(task, line["baseline_completion"], line["row"])
            record.update(
                student=line["student"], baseline_correct=bool(alone.correct), baseline_reward=float(alone.reward),
                baseline_details=alone.details, baseline_tokens=line["baseline_tokens"],
                teaching_tokens=line["teaching_tokens"],
            )
        records.append(record)
    return records


def write_records(path: Path, records: list[dict]) -> None:
    """Whole or not at all: written beside `path`, then moved over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)
