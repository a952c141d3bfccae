"""Optimizer and learning-rate schedule shared by the SFT module and the RL loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

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
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad],
        lr=args.learning_rate,
        betas=tuple(args.betas),
        eps=args.eps,
        weight_decay=args.weight_decay,
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
