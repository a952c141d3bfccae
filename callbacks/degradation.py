"""Writes degraded interactions (the student did worse with the teaching) and warns when NDR drops."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from callbacks.base import FabricCallback, gather_objects


class DegradationTracker(FabricCallback):
    """Appends degradations to `<out_dir>/<filename>` (JSONL: question, approach, teaching, both answers) and warns
    when the share of non-degraded interactions over the last `window` falls below `ndr_threshold`.

    Bounded both ways: at most `max_per_step` rows a step (the most degraded first; -1: all), the file moves to
    `<filename>.1` once it passes `max_file_mb` (0: never), and while NDR stays low the warning is repeated at most
    every `warn_every_n_steps` steps."""

    def __init__(self, filename: str = "degradations.jsonl", window: int = 50, ndr_threshold: float = 0.9,
                 warn_every_n_steps: int = 50, max_per_step: int = 16, max_file_mb: float = 64.0):
        self.filename = filename
        self.window: deque[bool] = deque(maxlen=window)
        self.ndr_threshold = ndr_threshold
        self.warn_every_n_steps = warn_every_n_steps
        self.max_per_step = max_per_step
        self.max_file_bytes = int(max_file_mb * 1024 * 1024)
        self._warned_at: int | None = None
        self._warned_ndr = 0.0

    def on_save_checkpoint(self, checkpoint: dict, **kwargs: Any) -> None:
        # a resumed run's window NDR (and its warning) then continues as the uninterrupted run's would
        checkpoint[self._checkpoint_key] = list(self.window)

    def on_load_checkpoint(self, checkpoint: dict, **kwargs: Any) -> None:
        self.window.clear()
        self.window.extend(checkpoint.get(self._checkpoint_key, []))

    @property
    def _checkpoint_key(self) -> str:
        return f"degradation_window/{self.filename}"

    def on_train_batch_end(self, fabric, state: dict, rollout, metrics: dict, iteration: int = 0,
                           **kwargs: Any) -> None:
        if iteration > 0:  # a further pass over the same rollout: its interactions are already counted
            return
        rows = [i for i in rollout.interactions if i.baseline_correct is not None]
        rows = gather_objects(fabric, rows)
        if not rows:
            return
        degraded = [i for i in rows if i.p_with < i.p_base]
        self.window.extend(i.p_with >= i.p_base for i in rows)
        ndr = sum(self.window) / len(self.window)
        metrics["teaching/window_ndr"] = ndr
        if fabric.global_rank != 0:
            return
        if 0 <= self.max_per_step < len(degraded):  # the most degraded, in rollout order
            worst = sorted(range(len(degraded)), key=lambda k: degraded[k].p_with - degraded[k].p_base)
            degraded = [degraded[k] for k in sorted(worst[: self.max_per_step])]
        if degraded:
            path = Path(state["out_dir"]) / self.filename
            if self.max_file_bytes and path.exists() and path.stat().st_size > self.max_file_bytes:
                path.replace(path.with_name(path.name + ".1"))  # keeps the newest rows, at most twice the cap
            with path.open("a") as f:
                for i in degraded:
                    record = {"step": state["step"], **asdict(i)}
                    record.pop("policy_completion", None)
                    record["teacher_completion"] = i.policy_completion
                    f.write(json.dumps(record) + "\n")
        low = len(self.window) == self.window.maxlen and ndr < self.ndr_threshold
        if not low:
            self._warned_at = None  # a later drop warns at once again
        elif self._warned_at is None or state["step"] - self._warned_at >= max(self.warn_every_n_steps, 1):
            since = "" if self._warned_at is None else (
                f", {ndr - self._warned_ndr:+.3f} since the last warning at step {self._warned_at}")
            self._warned_at, self._warned_ndr = state["step"], ndr
            fabric.print(
                f"warning: NDR over the last {len(self.window)} interactions is {ndr:.3f} "
                f"(< {self.ndr_threshold}{since}): {1 - ndr:.0%} of teachings left the student worse than alone; "
                f"see {self.filename} (repeated at most every {self.warn_every_n_steps} steps while it stays low; "
                "teaching/window_ndr logs every step)"
            )
