"""Counting verifier failures, so they are logged (`verifier/errors`, `verifier/timeouts`) and a run whose verifier
mostly fails stops with a clear message instead of training on rewards of 0."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rcl.tasks.base import Score


class VerifierFailure(RuntimeError):
    """Most verifier checks failed: the rewards say nothing about the completions."""


def is_timeout(score: Score) -> bool:
    """The verifier ran out of time (it sets `error`). A program that the code task stopped at its time limit is the
    model's failure (outcome timeout, no error), not the verifier's."""
    return score.details.get("outcome") == "timeout" and bool(score.details.get("error"))


def is_error(score: Score) -> bool:
    """A check that could not be made (a timeout included): the score says nothing about the completion."""
    return bool(score.details.get("error"))


@dataclass
class VerifierCounts:
    checks: int = 0
    errors: int = 0
    """Failed checks other than timeouts."""
    timeouts: int = 0

    def add(self, scores: Iterable[Score]) -> "VerifierCounts":
        for score in scores:
            self.checks += 1
            if is_timeout(score):
                self.timeouts += 1
            elif is_error(score):
                self.errors += 1
        return self

    @property
    def failed(self) -> int:
        return self.errors + self.timeouts

    def metrics(self) -> dict[str, float]:
        return {"verifier/checks": float(self.checks), "verifier/errors": float(self.errors),
                "verifier/timeouts": float(self.timeouts)}


@dataclass
class VerifierHealth:
    """Refuses to go on when more than `max_failed_share` of the checks failed, over one batch of at least
    `min_checks` or over the run so far (once it has `min_checks`)."""

    max_failed_share: float = 0.5
    min_checks: int = 16

    def __post_init__(self) -> None:
        self.total = VerifierCounts()

    def record(self, scores: Iterable[Score], what: str = "the verifier") -> VerifierCounts:
        """Count one batch of scores; raises VerifierFailure when the batch or the run so far mostly failed."""
        batch = VerifierCounts().add(scores)
        self.total.checks += batch.checks
        self.total.errors += batch.errors
        self.total.timeouts += batch.timeouts
        for scope, counts in (("this batch", batch), ("this run so far", self.total)):
            if counts.checks >= self.min_checks and counts.failed > self.max_failed_share * counts.checks:
                raise VerifierFailure(
                    f"{what} failed on {counts.failed} of {counts.checks} checks in {scope} ({counts.errors} errors, "
                    f"{counts.timeouts} timeouts): the rewards would be meaningless. Look at the scores' "
                    "details['error'] (e.g. with `python -m rcl score`), raise the task's timeout_s, or fix the "
                    "references"
                )
        return batch
