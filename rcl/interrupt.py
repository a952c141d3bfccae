"""Ctrl-C and SIGTERM during training. The first signal asks the loop to stop at the next optimizer-step boundary:
it saves a resumable checkpoint, prints one line with the command that resumes it, and exits with 128 + the signal
number. A second signal stops at once, without saving."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Catches SIGINT/SIGTERM while installed (main thread only; elsewhere it never fires)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":  # one notice, not one per process
            print(f"rcl: {signal.Signals(signum).name}: stopping after this step to save a checkpoint "
                  "(a second one stops at once, without saving)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class TrainingInterrupted(Exception):
    """Raised by a training loop that stopped on a signal after saving `checkpoint`."""

    def __init__(self, signum: int, step: int, checkpoint: Path, rank: int = 0) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint, self.rank = signum, step, Path(checkpoint), rank

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def resume_command(command: str, argv: list[str], checkpoint: Path) -> str:
    """The command line that resumes `checkpoint`: the same arguments, with `--ckpt_path` (and no `--overwrite`)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--ckpt_path", "--overwrite"):
            skip = True
            continue
        if arg.startswith(("--ckpt_path=", "--overwrite=")):
            continue
        kept.append(arg)
    return shlex.join(["python", "-m", "rcl", command, *kept, "--ckpt_path", str(checkpoint)])


def report(err: TrainingInterrupted, command: str, argv: list[str]) -> None:
    """Print the one line (on rank 0) and exit with 128 + the signal number."""
    if err.rank == 0:
        print(f"rcl: stopped by {signal.Signals(err.signum).name} after step {err.step}; resume with: "
              f"{resume_command(command, argv, err.checkpoint)}", file=sys.stderr, flush=True)
    raise SystemExit(err.exit_code) from None


def lightning_callback():
    """A Lightning callback that does the same for the SFT Trainer: on the first signal it lets the current optimizer
    step finish, saves `<checkpoints>/last.ckpt` through the Trainer and raises TrainingInterrupted (Lightning tears
    down, then the CLI prints the resume line). Built lazily, so the RL loop does not import lightning.pytorch."""
    from lightning.pytorch import Callback

    class SaveOnSignal(Callback):
        def __init__(self) -> None:
            self.stop = StopRequest()
            self._step_before = 0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.stop.install()  # after Lightning's own SIGTERM handler, which it restores at teardown

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.stop.restore()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.stop.restore()

        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            self._step_before = trainer.global_step

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == self._step_before:  # gradients are still accumulating: not a step boundary
                return
            if not trainer.strategy.reduce_boolean_decision(self.stop.requested, all=False):
                return
            callback = trainer.checkpoint_callback
            folder = Path(callback.dirpath) if getattr(callback, "dirpath", None) else \
                Path(trainer.default_root_dir) / "checkpoints"
            path = folder / "last.ckpt"
            trainer.save_checkpoint(path)
            raise TrainingInterrupted(self.stop.signum or signal.SIGINT, trainer.global_step, path, trainer.global_rank)

    return SaveOnSignal()
