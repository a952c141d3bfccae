"""Moves the reference model towards the policy: ref <- (1 - alpha) * ref + alpha * policy every N steps."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from callbacks.base import FabricCallback
from rcl.serving.weights import NamedTensor, iter_full_state


@torch.no_grad()
def mix_into(reference: torch.nn.Module, policy_weights: Iterable[NamedTensor], alpha: float) -> None:
    """`policy_weights`: the policy's full weights under the reference's names (`iter_full_state(..., all_ranks=True)`
    gathers them from ZeRO-3 or FSDP shards). Buffers have no counterpart to mix and are skipped."""
    ref_params = dict(reference.named_parameters())
    mixed = set()
    for name, value in policy_weights:
        target = ref_params.get(name)
        if target is None:
            continue
        target.mul_(1.0 - alpha).add_(value.to(device=target.device, dtype=target.dtype), alpha=alpha)
        mixed.add(name)
    missing = sorted(set(ref_params) - mixed)
    if missing:
        raise RuntimeError(f"reference sync: the policy has no weights for {missing[:5]} ({len(missing)} in all)")


class RefModelSync(FabricCallback):
    def __init__(self, alpha: float = 0.6, every_n_steps: int = 512):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, state: dict, fabric: Any = None, **kwargs: Any) -> None:
        reference = state.get("ref_model")
        if reference is None or state["step"] % self.every_n_steps != 0:
            return
        # every rank holds a whole reference model, so every rank needs the policy's full weights
        mix_into(reference, iter_full_state(state["model"], fabric, all_ranks=True), self.alpha)
