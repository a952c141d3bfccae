"""SFT labels are checked by the task's own verifier before use. The Affine guide labelled SAT examples with random,
unchecked assignments; here a label that its task does not score as correct is rejected, with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from rcl.tasks.base import Score, Task


@dataclass
class LabelCheck:
    accepted: list[dict] = field(default_factory=list)
    """Rows with a verified `label`."""
    rejected: list[tuple[dict, Score]] = field(default_factory=list)
    """(row, the label's score): wrong labels, and labels the verifier could not check (details["error"])."""


def check_labels(task: Task, rows: list[dict], labels: list[str] | None = None) -> LabelCheck:
    """Score each label (default: `task.gold_completion(row)`) with the task; keep the ones scored correct."""
    if labels is None:
        labels = [task.gold_completion(row) for row in rows]
    if len(labels) != len(rows):
        raise ValueError("one label per row")
    batch = getattr(task, "score_batch", None)
    scores = batch(labels, rows) if batch else [task.score(label, row) for label, row in zip(labels, rows)]
    check = LabelCheck()
    for row, label, score in zip(rows, labels, scores):
        if score.correct:
            check.accepted.append({**row, "label": label})
        else:
            check.rejected.append((row, score))
    return check


def verified_sft_rows(task: Task, rows: list[dict]) -> list[dict]:
    """Rows with their reference labels, all verified; raises if any label is wrong (a generator bug to fix, not data
    to drop silently)."""
    check = check_labels(task, rows)
    if check.rejected:
        row, score = check.rejected[0]
        raise ValueError(
            f"{len(check.rejected)} of {len(rows)} SFT labels fail the {task.name} verifier; first: "
            f"{score.details.get('outcome')} {score.details.get('error') or score.details.get('message', '')}"
        )
    return check.accepted
