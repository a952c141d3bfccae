"""A run folder's lifecycle: a fresh run refuses to land on an earlier one (unless told to replace it), and a resumed
run's logs are cut back to the checkpoint's step, so the steps replayed after it are not listed twice.

Only the names rcl writes count as a run and are replaced; anything else in the folder (a launcher's `launch-*`
logs, your own files) is left alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

RL_OUTPUTS = ("history.jsonl", "degradations.jsonl", "degradations.jsonl.1", "samples.jsonl", "checkpoints", "csv",
              "tensorboard", "hf_model", "quickstart.png", "best_hf_model", "best.json", "validate.jsonl")
"""What an RL run writes (`quickstart.png` is the quickstart's plot of `history.jsonl`: it goes with it)."""
SFT_OUTPUTS = ("config.yaml", "checkpoints", "csv", "tensorboard", "hf_model")
STEP_LOGS = ("history.jsonl", "degradations.jsonl", "degradations.jsonl.1", "samples.jsonl")
"""JSONL logs whose rows carry the optimizer `step` they were written at."""


class RunFolderInUse(ValueError):
    """A fresh run would replace an earlier run's outputs; the message says how to keep, resume or replace them."""


def log_version(command: str, ckpt_path: str | None) -> str:
    """The loggers' version folder: none for a fresh `fit` (`csv/metrics.csv`); a resumed fit, or another command on
    the same folder, logs into one of its own (`csv/resumed-last/`, `csv/validate/`), because the CSV logger replaces
    an existing `metrics.csv`."""
    if command == "fit" and not ckpt_path:
        return ""
    name = "resumed" if command == "fit" else command
    return f"{name}-{Path(ckpt_path).stem}" if ckpt_path else name


def earlier_outputs(root: Path, names: Iterable[str]) -> list[str]:
    """The rcl outputs present in `root` (an empty folder counts as absent)."""
    present = []
    for name in names:
        path = root / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            present.append(name + ("/" if path.is_dir() else ""))
    return present


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint a resume would start from: SFT's `last.ckpt`, else the highest RL `step-*.ckpt`."""
    folder = root / "checkpoints"
    if (folder / "last.ckpt").exists():
        return folder / "last.ckpt"
    steps = sorted(folder.glob("step-*.ckpt"))
    return steps[-1] if steps else None


def refuse_to_replace(root: Path, names: Iterable[str], out_flag: str) -> None:
    """Raise RunFolderInUse when `root` holds an earlier run; `out_flag` is the recipe key of the folder."""
    present = earlier_outputs(root, names)
    if not present:
        return
    checkpoint = latest_checkpoint(root)
    resume = f"resume it with --ckpt_path {checkpoint}, " if checkpoint else ""
    raise RunFolderInUse(
        f"{root} holds an earlier run ({', '.join(present)}): {resume}replace it with --overwrite true, or write "
        f"this run elsewhere with --{out_flag} DIR"
    )


def remove_outputs(root: Path, names: Iterable[str]) -> None:
    for name in names:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def truncate_to_step(path: Path, step: int) -> int:
    """Drop the rows of a step-keyed JSONL log written after `step` (by the run a resume replaces); returns how many.

    The file is rewritten through a temporary file and a rename, so a crash leaves the old or the new log whole."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            row_step = json.loads(line).get("step")
        except json.JSONDecodeError:  # a line cut short by the crash the run is resumed from
            dropped += 1
            continue
        if isinstance(row_step, int) and row_step > step:
            dropped += 1
        else:
            kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)
    return dropped
