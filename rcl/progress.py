"""Progress reporting: the ETA both loops print, and SFT's progress when its output is a log file rather than a
terminal (Lightning's bar draws nothing there)."""

from __future__ import annotations

import sys
import time
from typing import Any


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class StepClock:
    """Average seconds per step since this session's first step, and the time the remaining steps would take."""

    def __init__(self, start_step: int, now: float | None = None) -> None:
        self.start_step = start_step
        self.start = time.monotonic() if now is None else now

    def eta(self, step: int, total: int, now: float | None = None) -> float | None:
        done = step - self.start_step
        if done <= 0 or total <= 0:
            return None
        elapsed = (time.monotonic() if now is None else now) - self.start
        return elapsed / done * max(total - step, 0)

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.start


def is_terminal(stream: Any = None) -> bool:
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def sft_progress_bar(every_n_steps: int, every_s: float = 60.0):
    """Lightning's progress-bar slot for SFT: on a terminal, Rich's bar labelled `Epoch N` when training runs by
    steps (Lightning's own label reads `Epoch 0/-2` with `max_epochs: -1`); otherwise one line every `every_n_steps`
    optimizer steps, or every `every_s` seconds at the latest, with step/total, loss, tokens/s and the ETA."""
    from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

    class StepLabelledRichBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            if self.trainer.max_epochs in (None, -1):
                return f"Epoch {current_epoch}"
            return super()._get_train_description(current_epoch)

    class ProgressLines(ProgressBar):
        def __init__(self) -> None:
            super().__init__()
            self._enabled = True
            self.clock: StepClock | None = None
            self._tokens = 0
            self._window_start = 0.0
            self._last_line = 0.0
            self._step_before = 0

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.clock = StepClock(trainer.global_step)
            self._window_start = self._last_line = time.monotonic()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self._step_before = trainer.global_step

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            mask = batch.get("attention_mask") if isinstance(batch, dict) else None
            self._tokens += int(mask.sum()) * trainer.world_size if mask is not None else 0
            step = trainer.global_step
            if step == self._step_before or not self._enabled or not trainer.is_global_zero:
                return
            now = time.monotonic()
            if step % max(every_n_steps, 1) and now - self._last_line < every_s:
                return
            print(self.line(trainer, outputs, now), flush=True)
            self._tokens, self._window_start, self._last_line = 0, now, now

        def line(self, trainer: Any, outputs: Any, now: float) -> str:
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else \
                int(trainer.estimated_stepping_batches)
            step = trainer.global_step
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            parts = [f"step {step}/{total}"]
            if loss is not None:
                parts.append(f"loss {float(loss):.4f}")
            parts.append(f"{self._tokens / max(now - self._window_start, 1e-9):.0f} tokens/s")
            eta = self.clock.eta(step, total, now) if self.clock else None
            parts.append(f"elapsed {format_duration(self.clock.elapsed(now) if self.clock else 0)}")
            if eta is not None:
                parts.append(f"eta {format_duration(eta)}")
            return "sft " + " | ".join(parts)

    return StepLabelledRichBar() if is_terminal() else ProgressLines()
