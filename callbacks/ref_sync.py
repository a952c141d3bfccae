"""Moves the reference model towards the policy: ref <- (1 - alpha) * ref + alpha * policy every N steps."""

from __future__ import annotations

from typing import Any

import torch

from callbacks.base import FabricCallback


@torch.no_grad()
def mix_into(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    ref_params = dict(reference.named_parameters())
    for name, param in policy.named_parameters():
        target = ref_params[name]
        target.mul_(1.0 - alpha).add_(param.detach().to(target.dtype), alpha=alpha)


class RefModelSync(FabricCallback):
    def __init__(self, alpha: float = 0.6, every_n_steps: int = 512):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, state: dict, **kwargs: Any) -> None:
        reference = state.get("ref_model")
        if reference is None or state["step"] % self.every_n_steps != 0:
            return
        mix_into(reference, unwrap(state["model"]), self.alpha)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside Fabric/DDP wrappers (parameter names then match the reference model's)."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module
