"""The maths of PPO as small pure torch functions: per-token GAE with episode ends, whitening, the clipped policy and
value losses, entropy, KL estimators, explained variance, and the adaptive KL controller.

Layout: `[B, T]` per-token tensors; `mask` is 1 on the tokens the policy produced (the ones trained), 0 on padding and
on environment text. Masked positions are skipped by GAE: the value after an action token is the value of the next
*action* token of the same row, so environment text between two turns never bootstraps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rcl.grpo import kl_k3, masked_mean

KLEstimator = Literal["k1", "k3"]


def gae(rewards: Tensor, values: Tensor, dones: Tensor, mask: Tensor, gamma: float, lam: float
        ) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation per token, right to left over the active (mask 1) positions of each row.

    delta_t = r_t + gamma * V_next * (1 - done_t) - V_t and A_t = delta_t + gamma * lam * (1 - done_t) * A_next, where
    `next` is the next active position of the row (V_next = 0 past the row's end). A `done` at t ends an episode there:
    nothing after t leaks into A_t, which is what the guide's GAE got wrong. Returns (advantages, returns = A + V),
    both 0 on masked positions.
    """
    if not (rewards.shape == values.shape == dones.shape == mask.shape):
        raise ValueError(f"shapes differ: {rewards.shape}, {values.shape}, {dones.shape}, {mask.shape}")
    rewards, values = rewards.float(), values.float()
    dones, mask = dones.float(), mask.float()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(rewards.size(1))):
        active = mask[:, t]
        carry = 1.0 - dones[:, t]
        delta = rewards[:, t] + gamma * next_value * carry - values[:, t]
        adv = delta + gamma * lam * carry * next_adv
        advantages[:, t] = adv * active
        # an inactive position passes the later action's value and advantage through unchanged
        next_value = torch.where(active.bool(), values[:, t], next_value)
        next_adv = torch.where(active.bool(), adv, next_adv)
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
           total: Callable[[Tensor], Tensor] = lambda t: t) -> Tensor:
    """(x - mean) / std over the active positions (unbiased std; masked positions stay 0).

    `total` sums a scalar over the training processes (an all-reduce), so that under DDP the mean and std are those of
    the whole batch and each process whitens its share exactly as one process would whiten all of it."""
    mask = mask.to(values.dtype)
    n = total(mask.sum()).clamp(min=1.0)
    mean = total((values * mask).sum()) / n
    var = total((((values - mean) * mask) ** 2).sum()) / (n - 1).clamp(min=1.0)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate with per-token advantages, averaged over active tokens. Stats: clip fraction (share of
    active tokens where the clipped branch is taken) and approx-KL (k3 of old vs new, the low-variance estimator)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(kl_k3(logp, old_logp), mask)
    return loss, {"policy/clip_frac": clip_frac, "policy/approx_kl": approx_kl}


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2) over active tokens (no clipping with clip None)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), {"value/clip_frac": torch.zeros((), device=values.device)}
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        frac = masked_mean((clipped > unclipped).to(values.dtype), mask)
    return loss, {"value/clip_frac": frac}


def process_share(local_tokens: Tensor, global_tokens: Tensor, world_size: int) -> Tensor:
    """The factor that turns a process's token mean into its share of the global token mean: DDP averages the
    processes' gradients, so mean_p(share_p x mean_p) = sum over all tokens / all tokens whatever each holds."""
    return local_tokens * world_size / global_tokens.clamp(min=1.0)


def entropy(logits: Tensor) -> Tensor:
    """Per-position entropy [B, T] of softmax(logits [B, T, V])."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator) -> Tensor:
    """k1 = log pi - log ref (unbiased, can be negative) or k3 (always >= 0), per sampled token."""
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1 or k3")


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over active positions (1: perfect critic, 0: no better than the mean, < 0: worse)."""
    m = mask.bool()
    r, v = returns[m].float(), values[m].float()
    if r.numel() < 2:
        return torch.tensor(float("nan"))
    var = r.var()
    return 1.0 - (r - v).var() / var if var > 0 else torch.tensor(float("nan"))


def token_rewards(scores: list[list[tuple[int, float]]], width: int) -> tuple[Tensor, Tensor]:
    """Per-token reward and done tensors [B, width] from each row's (position, reward) steps: the reward of a step is
    placed on its last token; the row's last step is the episode's end (done)."""
    rewards = torch.zeros(len(scores), width)
    dones = torch.zeros(len(scores), width)
    for row, steps in enumerate(scores):
        for position, reward in steps:
            rewards[row, position] += reward
        if steps:
            dones[row, max(p for p, _ in steps)] = 1.0
    return rewards, dones


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move the KL coefficient so the measured KL tracks `target` with time constant `horizon`
    (the proportional error is clipped to +-0.2)."""

    value: float
    target: float
    horizon: float

    def update(self, current_kl: float, n_steps: int) -> float:
        error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
