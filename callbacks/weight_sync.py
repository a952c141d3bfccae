"""Keep the teacher's generation servers on-policy: push the policy's weights after optimizer steps.

Only the teacher engine is synced (the student is a frozen, differently sized model), and only engines that have
`update_weights` (an in-process engine reads the live policy already). Gathering is a collective under ZeRO-3/FSDP,
so every rank runs the callback; rank 0 alone talks to the servers.
"""

from __future__ import annotations

from typing import Any

from callbacks.base import FabricCallback
from rcl.serving.weights import iter_full_state


class WeightSync(FabricCallback):
    """Fabric callback: `fabric.call("on_train_batch_end", fabric=..., state=..., engines=...)` after each step.

    Logs `sync/seconds`, `sync/bytes`, `sync/buckets`: into the loop's `metrics` dict when the hook gets one (the loop
    logs it right after), else with `fabric.log_dict`.
    """

    def __init__(self, every_n_steps: int = 1, bucket_mb: float = 64.0):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        self.every_n_steps = every_n_steps
        self.bucket_bytes = max(1, int(bucket_mb * 1024 * 1024))

    def on_train_start(self, fabric: Any = None, state: dict | None = None, engines: dict | None = None,
                       **kwargs: Any) -> None:
        # A resumed run's servers still hold the weights they were launched with.
        if fabric is not None and state is not None and state["step"] > 0:
            self.sync(fabric, state["model"], (engines or {}).get("teacher"))

    def on_train_batch_end(self, fabric: Any = None, state: dict | None = None, engines: dict | None = None,
                           metrics: dict | None = None, **kwargs: Any) -> None:
        if state is None or fabric is None or state["step"] % self.every_n_steps != 0:
            return
        stats = self.sync(fabric, state["model"], (engines or {}).get("teacher"))
        if stats is None:
            return
        scalars = {f"sync/{k}": float(v) for k, v in stats.items()}
        if isinstance(metrics, dict):
            metrics.update(scalars)
        else:
            fabric.log_dict(scalars, step=state["step"])

    def sync(self, fabric: Any, model: Any, engine: Any) -> dict | None:
        """Push `model`'s full weights to `engine` now; returns the stats (on every rank) or None if not a server."""
        if not callable(getattr(engine, "update_weights", None)):
            return None
        named = iter_full_state(model, fabric)
        if fabric.global_rank == 0:
            stats = engine.update_weights(named, bucket_bytes=self.bucket_bytes)
        else:
            for _ in named:  # join the gathers rank 0 is doing
                pass
            stats = None
        return fabric.broadcast(stats, src=0)
