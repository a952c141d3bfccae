"""Logs the teaching metrics (NDR, TES, learning gain, accuracies, lengths) at each step and at evaluation."""

from __future__ import annotations

from typing import Any

import torch

from callbacks.base import FabricCallback
from rcl.metrics import TeachingMetrics as TeachingMetricCollection


def update_teaching_metrics(metric: TeachingMetricCollection, interactions: list, device: Any) -> bool:
    """Feed adaptive-teaching interactions to `metric`; False when there are none (direct protocol)."""
    rows = [i for i in interactions if i.baseline_correct is not None]
    if not rows:
        return False

    def column(name: str) -> torch.Tensor:
        return torch.tensor([float(getattr(i, name)) for i in rows], device=device)

    metric.update(
        p_base=column("p_base"),
        p_with=column("p_with"),
        completed=column("completed"),
        teaching_tokens=column("teaching_tokens"),
        probe_tokens=column("probe_tokens"),
    )
    return True


class TeachingMetrics(FabricCallback):
    """torchmetrics synced across processes; train values per step under `teaching/`, eval values under `eval/`."""

    def __init__(self) -> None:
        self.train = TeachingMetricCollection()
        self.eval = TeachingMetricCollection()

    def _log(self, metric, fabric, interactions, metrics: dict, prefix: str) -> None:
        metric.to(fabric.device)
        metric.reset()
        if update_teaching_metrics(metric, interactions, fabric.device):
            metrics.update({f"{prefix}{k}": float(v) for k, v in metric.compute().items()})

    def on_train_batch_end(self, fabric, rollout, metrics: dict, **kwargs: Any) -> None:
        self._log(self.train, fabric, rollout.interactions, metrics, "teaching/")

    def on_validation_end(self, fabric, rollout, metrics: dict, **kwargs: Any) -> None:
        self._log(self.eval, fabric, rollout.interactions, metrics, "eval/")
