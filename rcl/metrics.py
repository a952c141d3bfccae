"""Teaching metrics as torchmetrics `Metric`s whose states are sums (`dist_reduce_fx="sum"`), so values synced over
processes equal the values on the concatenated data (the original computed them on each rank's rows only).

Every `update` takes per-interaction tensors of shape [N] (one entry per question the teacher taught):
- `p_base`: share of the student's baseline samples (no teaching) that are correct, in [0, 1];
- `p_with`: share of the student's samples with this teaching that are correct, in [0, 1];
- `completed`: share of the student-with-teaching responses that finished by a stop and hold an answer the task could
  score (see `completion_share`);
- `teaching_tokens`: tokens of the teaching shown to the student;
- `probe_tokens`: tokens of the student's diagnostic probe.
With no data, every value is NaN (undefined, and visibly so in logs), as is `tes` when the mean teaching length is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric



def completion_share(has_answer: Sequence[bool], finished_by_stop: Sequence[bool]) -> float:
    """Share of responses that finished by a stop (not the token budget) and hold an answer (the task's
    `Score.has_answer`)."""
    if len(has_answer) != len(finished_by_stop):
        raise ValueError(f"{len(has_answer)} responses but {len(finished_by_stop)} finish flags")
    if not has_answer:
        return float("nan")
    return sum(bool(a) and bool(f) for a, f in zip(has_answer, finished_by_stop)) / len(has_answer)


def teaching_efficiency_score(
    baseline_accuracy: Tensor, with_teaching_accuracy: Tensor, completion_rate: Tensor, teaching_tokens_mean: Tensor
) -> Tensor:
    """TES = (acc_with - acc_base) * completion_rate / (mean teaching tokens / 1000); NaN for zero-length teaching."""
    if teaching_tokens_mean <= 0:
        return torch.tensor(float("nan"), dtype=teaching_tokens_mean.dtype)
    return (with_teaching_accuracy - baseline_accuracy) * completion_rate / (teaching_tokens_mean / 1000)


class _SumMetric(Metric):
    """A metric whose states are float64 scalars all-reduced by sum, one per name in `sums`, plus `count`."""

    sums: tuple[str, ...] = ()
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("count", *self.sums):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, **columns: Tensor) -> dict[str, Tensor]:
        """Validate per-interaction columns, add their count and return them as float64."""
        shapes = {name: tuple(value.shape) for name, value in columns.items()}
        first = next(iter(shapes.values()))
        if len(first) != 1 or any(shape != first for shape in shapes.values()):
            raise ValueError(f"{type(self).__name__}.update needs 1-D tensors of one length, got {shapes}")
        self.count += first[0]
        return {name: value.detach().to(self.count.device, torch.float64) for name, value in columns.items()}

    def _mean(self, total: Tensor) -> Tensor:
        return total / self.count if self.count > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class NonDegradationRate(_SumMetric):
    """NDR: share of interactions in which teaching did not lower the student's accuracy (p_with >= p_base)."""

    sums = ("non_degraded",)
    higher_is_better = True

    def update(self, p_base: Tensor, p_with: Tensor) -> None:
        columns = self._accumulate(p_base=p_base, p_with=p_with)
        self.non_degraded += (columns["p_with"] >= columns["p_base"]).sum()

    def compute(self) -> Tensor:
        return self._mean(self.non_degraded).float()


class LearningGain(_SumMetric):
    """Mean accuracy change per interaction, mean(p_with - p_base) (the docs' "learning rate", renamed)."""

    sums = ("gain",)
    higher_is_better = True

    def update(self, p_base: Tensor, p_with: Tensor) -> None:
        columns = self._accumulate(p_base=p_base, p_with=p_with)
        self.gain += (columns["p_with"] - columns["p_base"]).sum()

    def compute(self) -> Tensor:
        return self._mean(self.gain).float()


class TeachingEfficiencyScore(_SumMetric):
    """TES = (acc_with - acc_base) * completion_rate / (mean teaching tokens / 1000)."""

    sums = ("p_base", "p_with", "completed", "teaching_tokens")
    higher_is_better = True

    def update(self, p_base: Tensor, p_with: Tensor, completed: Tensor, teaching_tokens: Tensor) -> None:
        columns = self._accumulate(
            p_base=p_base, p_with=p_with, completed=completed, teaching_tokens=teaching_tokens
        )
        for name, value in columns.items():
            setattr(self, name, getattr(self, name) + value.sum())

    def compute(self) -> Tensor:
        means = [self._mean(getattr(self, name)) for name in self.sums]
        return teaching_efficiency_score(*means).float()


class TeachingMetrics(_SumMetric):
    """All teaching metrics from one set of sums (one sync). `compute()` returns a flat dict: ndr, tes,
    learning_gain, completion_rate, baseline_accuracy, with_teaching_accuracy, improvement_rate (share with
    p_with > p_base), degradation_rate (share with p_with < p_base), teaching_tokens_mean, probe_tokens_mean."""

    sums = (
        "p_base", "p_with", "completed", "teaching_tokens", "probe_tokens", "non_degraded", "improved", "degraded",
    )  # fmt: skip

    def update(
        self, p_base: Tensor, p_with: Tensor, completed: Tensor, teaching_tokens: Tensor, probe_tokens: Tensor
    ) -> None:
        columns = self._accumulate(
            p_base=p_base,
            p_with=p_with,
            completed=completed,
            teaching_tokens=teaching_tokens,
            probe_tokens=probe_tokens,
        )
        for name, value in columns.items():
            setattr(self, name, getattr(self, name) + value.sum())
        delta = columns["p_with"] - columns["p_base"]
        self.non_degraded += (delta >= 0).sum()
        self.improved += (delta > 0).sum()
        self.degraded += (delta < 0).sum()

    def compute(self) -> dict[str, Tensor]:
        baseline, with_teaching = self._mean(self.p_base), self._mean(self.p_with)
        completion_rate, teaching_tokens = self._mean(self.completed), self._mean(self.teaching_tokens)
        values = {
            "ndr": self._mean(self.non_degraded),
            "tes": teaching_efficiency_score(baseline, with_teaching, completion_rate, teaching_tokens),
            "learning_gain": with_teaching - baseline,
            "completion_rate": completion_rate,
            "baseline_accuracy": baseline,
            "with_teaching_accuracy": with_teaching,
            "improvement_rate": self._mean(self.improved),
            "degradation_rate": self._mean(self.degraded),
            "teaching_tokens_mean": teaching_tokens,
            "probe_tokens_mean": self._mean(self.probe_tokens),
        }
        return {name: value.float() for name, value in values.items()}
