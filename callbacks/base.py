"""Base of rcl's Fabric callbacks and the hooks the RL loop fires.

The loop calls `fabric.call(hook, fabric=..., state=..., ...)` with Lightning's hook names; Fabric passes every
keyword to every callback, so each hook takes `**kwargs` and picks what it needs:

- `on_train_start(fabric, state)`
- `on_train_batch_start(fabric, state, rows)`: before a rollout; `rows` are this process's prompts
- `on_before_optimizer_step(fabric, state, optimizer)`
- `on_train_batch_end(fabric, state, rollout, metrics, engines, iteration)`: after each optimizer step; callbacks may
  add scalars to `metrics` (logged by the loop right after) and see the `engines` dict {"teacher", "student"};
  `iteration` counts the passes over this rollout (0 first; `grpo.num_iterations > 1` trains on one rollout again)
- `on_validation_start(fabric, state, engines)`: before an evaluation generates (a `validate` run's first act)
- `on_validation_end(fabric, state, rollout, metrics)`: after an evaluation rollout; `metrics` as above
- `on_train_end(fabric, state)`
- `on_save_checkpoint(fabric, state, checkpoint)`: before a checkpoint is written; a callback with state of its own
  adds it to the `checkpoint` dict under a key of its own
- `on_load_checkpoint(fabric, state, checkpoint)`: after a resume; `checkpoint` holds what the loop did not restore

`state` is the loop's state dict: "model", "optimizer", "scheduler", "step" (optimizer steps done), "ref_model"
(None when beta is 0), "out_dir".
"""

from __future__ import annotations

from typing import Any


class FabricCallback:
    """Subclass and override the hooks you need; config files name subclasses by `class_path`."""

    def on_train_start(self, **kwargs: Any) -> None: ...

    def on_train_batch_start(self, **kwargs: Any) -> None: ...

    def on_before_optimizer_step(self, **kwargs: Any) -> None: ...

    def on_train_batch_end(self, **kwargs: Any) -> None: ...

    def on_validation_start(self, **kwargs: Any) -> None: ...

    def on_validation_end(self, **kwargs: Any) -> None: ...

    def on_train_end(self, **kwargs: Any) -> None: ...

    def on_save_checkpoint(self, **kwargs: Any) -> None: ...

    def on_load_checkpoint(self, **kwargs: Any) -> None: ...


def gather_objects(fabric: Any, objects: list) -> list:
    """Concatenate a picklable list from every process (in rank order); a no-op on one process."""
    if fabric.world_size == 1:
        return list(objects)
    import torch.distributed as dist

    gathered: list = [None] * fabric.world_size
    dist.all_gather_object(gathered, objects)
    return [o for part in gathered for o in part]
