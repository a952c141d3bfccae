"""Keep the teacher's generation servers on-policy: push the policy's weights after optimizer steps.

Only the teacher engine is synced (the student is a frozen, differently sized model), and only engines that have
`update_weights` (an in-process engine reads the live policy already). Gathering is a collective under ZeRO-3/FSDP,
so every rank runs the callback; rank 0 alone talks to the servers.

Every `verify_every_n_pushes`-th push is checked: the servers generate greedily from a fixed probe prompt with
log-probs, the trainer scores the same tokens, and a token whose log-probs differ by more than `verify_tolerance`
stops training with both values (`WeightSyncMismatch`). Log-probs, unlike a checksum, are comparable whatever layout
an engine keeps its weights in (vLLM repacks them).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from callbacks.base import FabricCallback
from rcl.engines import SamplingParams
from rcl.serving.weights import iter_full_state

PROBE_TEXT = "Weights check: 12 + 30 = 42, and the capital of France is"
PROBE_TOKENS = 8


class WeightSync(FabricCallback):
    """Fabric callback: `fabric.call("on_train_batch_end", fabric=..., state=..., engines=...)` after each step.

    Logs `sync/seconds`, `sync/bytes`, `sync/buckets`, `sync/push_wait` (waiting for rollouts in flight) and, on
    checked pushes, `sync/verify_max_abs_diff` and `sync/verify_seconds`: into the loop's `metrics` dict when the hook
    gets one (the loop logs it right after), else with `fabric.log_dict`.
    """

    def __init__(self, every_n_steps: int = 1, bucket_mb: float = 64.0, adapter_only: bool = False,
                 verify_every_n_pushes: int = 1, verify_tolerance: float = 1e-3):
        """`adapter_only`: push a LoRA policy's adapter (`/load_adapter/` of `rcl serve --enable-lora`), not the merged
        weights."""
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        if verify_every_n_pushes < 0 or verify_tolerance < 0:
            raise ValueError("verify_every_n_pushes and verify_tolerance must be >= 0")
        self.every_n_steps = every_n_steps
        self.bucket_bytes = max(1, int(bucket_mb * 1024 * 1024))
        self.adapter_only = adapter_only
        self._adapter_version = 0
        self.verify_every_n_pushes = verify_every_n_pushes
        self.verify_tolerance = verify_tolerance
        self.pushes = 0
        self._synced_step: int | None = None
        """The step whose weights the servers hold (None before the first push)."""

    def on_train_start(self, fabric: Any = None, state: dict | None = None, engines: dict | None = None,
                       **kwargs: Any) -> None:
        # Fresh or resumed, the servers hold whatever they were started with: push before the first rollout, so a
        # hand-started server with other weights is overwritten (or refuses the push) instead of trained against.
        self._sync_now(fabric, state, engines)

    def on_validation_start(self, fabric: Any = None, state: dict | None = None, engines: dict | None = None,
                            **kwargs: Any) -> None:
        """`validate` evaluates a checkpoint: its weights reach the servers before they generate."""
        self._sync_now(fabric, state, engines)

    def on_train_batch_end(self, fabric: Any = None, state: dict | None = None, engines: dict | None = None,
                           metrics: dict | None = None, **kwargs: Any) -> None:
        if state is None or fabric is None or state["step"] % self.every_n_steps != 0:
            return
        stats = self.push(fabric, state, (engines or {}).get("teacher"))
        if stats is None:
            return
        scalars = {f"sync/{k}": float(v) for k, v in stats.items()}
        if isinstance(metrics, dict):
            metrics.update(scalars)
        else:
            fabric.log_dict(scalars, step=state["step"])

    def _sync_now(self, fabric: Any, state: dict | None, engines: dict | None) -> None:
        if fabric is None or state is None or self._synced_step == state["step"]:
            return
        self.push(fabric, state, (engines or {}).get("teacher"))

    def push(self, fabric: Any, state: dict, engine: Any) -> dict | None:
        """`sync`, then the version note and, every `verify_every_n_pushes` pushes, the probe check."""
        if not callable(getattr(engine, "update_weights", None)):
            return None
        before = getattr(engine, "before_weights_push", None)
        waited = float(before()) if callable(before) else 0.0
        stats = self.sync(fabric, state["model"], engine)
        self._synced_step = state["step"]
        self.pushes += 1
        pushed = getattr(engine, "weights_pushed", None)
        if callable(pushed):
            pushed(state["step"])
        stats = {**stats, "push_wait": waited}
        if self.verify_every_n_pushes and self.pushes % self.verify_every_n_pushes == 0:
            stats.update(self.verify(fabric, state["model"], engine))
        return stats

    def verify(self, fabric: Any, model: Any, engine: Any) -> dict:
        """Greedy probe log-probs, served against the trainer's; raises WeightSyncMismatch on every rank."""
        from rcl.grpo import completion_logprobs

        start = time.perf_counter()
        prompt = engine.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]

        def probe() -> dict:
            completion = engine.generate([prompt], SamplingParams(max_tokens=PROBE_TOKENS, temperature=0))[0][0]
            return {"ids": list(completion.token_ids), "logprobs": completion.logprobs}

        served = on_rank_zero(fabric, probe, "the weights check could not query the generation servers",
                              local=getattr(engine, "per_process", False))  # each process checks its own copy
        if served["logprobs"] is None:
            raise WeightSyncError("the weights check needs log-probs from the generation servers, which sent none; "
                                  "set engines.verify_every_n_pushes: 0 to skip it")
        device = next(model.parameters()).device
        ids = torch.tensor([prompt + served["ids"]], device=device)
        with torch.no_grad():
            mine = completion_logprobs(model, ids, torch.ones_like(ids), len(served["ids"]))[0].float().cpu()
        theirs = torch.tensor(served["logprobs"], dtype=torch.float32)
        diff = float((mine - theirs).abs().max())
        if not diff <= self.verify_tolerance:
            raise WeightSyncMismatch(
                f"after the push the servers' weights are not the trainer's: greedy log-probs of the probe "
                f"{PROBE_TEXT!r} + tokens {served['ids']} are {[round(v, 6) for v in theirs.tolist()]} on the servers "
                f"and {[round(v, 6) for v in mine.tolist()]} in the trainer (largest difference {diff:.3g} > "
                f"engines.verify_tolerance {self.verify_tolerance:g})")
        return {"verify_max_abs_diff": diff, "verify_seconds": time.perf_counter() - start}

    def sync(self, fabric: Any, model: Any, engine: Any) -> dict | None:
        """Push `model`'s full weights to `engine` now; returns the stats (on every rank) or None if not a server.

        A push that fails on rank 0 fails on every rank at once, with the server's error: the other ranks would
        otherwise wait in the broadcast below until the collective times out.
        """
        if not callable(getattr(engine, "update_weights", None)):
            return None
        if self.adapter_only:
            return self._push_adapter(fabric, model, engine)
        if getattr(engine, "per_process", False):  # every process has its own copy (an in-process async worker)
            return engine.update_weights(iter_full_state(model, fabric, all_ranks=True), bucket_bytes=self.bucket_bytes)
        named = iter_full_state(model, fabric)

        def join_gathers() -> None:  # other ranks join rank 0's gathers; a failed rank 0 finishes them
            for _ in named:
                pass

        return on_rank_zero(fabric, lambda: engine.update_weights(named, bucket_bytes=self.bucket_bytes),
                            "pushing the policy's weights to the generation servers failed", then=join_gathers)

    def _push_adapter(self, fabric: Any, model: Any, engine: Any) -> dict:
        from rcl.serving.adapters import push_adapter

        self._adapter_version += 1
        # adapters are replicated under DDP (sharded strategies are refused up front)
        return on_rank_zero(fabric, lambda: push_adapter(engine, model, self._adapter_version),
                            "pushing the policy's adapter to the generation servers failed")


def on_rank_zero(fabric: Any, act: Any, failure: str, then: Any = None, local: bool = False) -> Any:
    """`act()` on rank 0 (on every rank when `local`), its result on every rank. A failure there is raised on every
    rank at once as `WeightSyncError(failure: error)`: the other ranks would otherwise wait in the next collective
    until it times out. `then()` runs on every rank after `act`, before the broadcast."""
    outcome: dict = {}
    if fabric.global_rank == 0 or local:
        try:
            outcome["value"] = act()
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            outcome["error"] = f"{type(exc).__name__}: {exc}"
    if then is not None:
        then()
    if not local:
        outcome = fabric.broadcast(outcome, src=0)
    if "error" in outcome:
        raise WeightSyncError(f"{failure}: {outcome['error']}")
    return outcome["value"]


class WeightSyncError(RuntimeError):
    """A weight push failed; raised on every process."""


class WeightSyncMismatch(WeightSyncError):
    """A push went through, but the servers do not compute what the trainer computes; raised on every process."""
