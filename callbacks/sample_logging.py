"""Writes a few rollouts every N steps: a W&B table when a W&B logger is active, `samples.jsonl` always."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callbacks.base import FabricCallback

COLUMNS = ("step", "question", "ground_truth", "approach", "teaching", "policy_completion", "p_base", "p_with", "reward")


class SampleLogger(FabricCallback):
    def __init__(self, every_n_steps: int = 10, num_samples: int = 4, filename: str = "samples.jsonl"):
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.filename = filename

    def on_train_batch_end(self, fabric, state: dict, rollout, **kwargs: Any) -> None:
        if self.every_n_steps <= 0 or state["step"] % self.every_n_steps != 0 or fabric.global_rank != 0:
            return
        rows = [
            {"step": state["step"], **{k: getattr(i, k) for k in COLUMNS[1:]}}
            for i in rollout.interactions[: self.num_samples]
        ]
        with (Path(state["out_dir"]) / self.filename).open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for logger in fabric.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_table("samples", columns=list(COLUMNS), data=[[r[c] for c in COLUMNS] for r in rows])
