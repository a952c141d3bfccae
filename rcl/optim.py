"""Optimizer and learning-rate schedule shared by the SFT module and the RL loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch


@dataclass
class OptimizerArgs:
    """AdamW with a linear warm-up followed by a cosine, linear or constant schedule."""

    learning_rate: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape after warm-up."""
    warmup_ratio: float = 0.0
    """Share of the total optimizer steps spent warming up linearly from 0."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine/linear decay as a share of the peak."""
    max_grad_norm: float | None = 1.0
    """Clip gradients to this norm (null: no clipping)."""


def build_optimizer(params: Iterable[torch.nn.Parameter], args: OptimizerArgs) -> torch.optim.AdamW:
    trainable = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=tuple(args.betas),
        eps=args.eps,
        weight_decay=args.weight_decay,
        fused=True if fused_on_cpu(trainable) else None,
    )


def fused_on_cpu(params: Sequence[torch.nn.Parameter]) -> bool:
    """Whether AdamW's fused kernel is taken: plain floating-point parameters that all live on the CPU. On CPU
    torch's default is a loop over the parameters; the fused step took 1.2 ms against 5.1 ms on tiny-1m and 9.8 ms
    against 28 ms on tiny-10m (1 thread). Sharded parameters (FSDP's flat or DTensor parameters) and accelerators
    keep torch's default."""
    return bool(params) and all(
        type(p) is torch.nn.Parameter and p.device.type == "cpu" and p.dtype.is_floating_point for p in params
    )


def lr_factor(step: int, total_steps: int, args: OptimizerArgs) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based) of `total_steps`."""
    warmup = int(args.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if args.schedule == "constant" or total_steps <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if args.schedule == "cosine" else 1.0 - progress
    return args.min_lr_ratio + (1.0 - args.min_lr_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, args: OptimizerArgs
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, args))
