"""PPO in the RL loop: a critic (a value head on the policy's last hidden states, or a separate critic model), per-token
GAE, and `ppo_epochs` passes over mini-batches of one rollout.

`algorithm: ppo` swaps the loop's GRPO `train_step` for `train_step` here; rollouts, rewards, callbacks, logging,
checkpoints and weight sync are the loop's own. One loop step is one rollout: its optimizer updates are the
`ppo_epochs x mini-batches` inside. The sequence reward (the same reward functions as GRPO) lands on the completion's
last token, minus `kl_coef * KL` on every token against the reference (a frozen copy, or the disabled LoRA adapter);
multi-turn rollouts put each step's reward on that turn's last token (`Rollout.turn_rewards`).

The guide's defects are fixed and tested: the value head is trained (its forward is inside autograd), the entropy
bonus and advantage whitening are applied, GAE stops at episode ends, and the optimizer steps once per mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rcl.grpo import token_logprobs
from rcl.rl import ppo_math

Critic = Literal["value_head", "model"]


@dataclass
class PPOArgs:
    """PPO's critic and objective (used with `algorithm: ppo`)."""

    critic: Critic = "value_head"
    """value_head: a 2-layer MLP on the policy's last hidden states (shares the trunk; LoRA-friendly, trained in full);
    model: a separate critic (a transformer backbone of its own with the same head)."""
    critic_model: str | None = None
    """The separate critic's backbone (null: the policy's starting model)."""
    gamma: float = 0.99
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Policy ratio clip."""
    clip_range_value: float | None = 0.2
    """Value clip around the rollout's values (null: unclipped value loss)."""
    vf_coef: float = 0.5
    entropy_coef: float = 0.01
    """Entropy bonus weight (the loss subtracts entropy_coef * mean token entropy)."""
    whiten_advantages: bool = True
    kl_coef: float = 0.0
    """Per-token KL penalty in the reward against the reference (0: no reference is loaded)."""
    kl_estimator: ppo_math.KLEstimator = "k1"
    adaptive_kl: bool = False
    """Adapt kl_coef towards target_kl (Ziegler et al.)."""
    target_kl: float = 6.0
    kl_horizon: float = 10000.0
    ppo_epochs: int = 4
    """Passes over one rollout."""
    mini_batch_size: int = 8
    """Completions per optimizer update (each update is one optimizer step), over all processes: under DDP each process
    takes mini_batch_size / processes of its own rows (it must divide)."""
    critic_learning_rate: float | None = None
    """Learning rate of the critic (null: the policy's)."""


class ValueHead(nn.Module):
    """Linear(h, h/2) - ReLU - Linear(h/2, 1): a scalar value per position from hidden states."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size // 2), nn.ReLU(), nn.Linear(hidden_size // 2, 1))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.net(hidden.to(self.net[0].weight.dtype)).squeeze(-1)


class SeparateCritic(nn.Module):
    """A critic with its own transformer backbone (`AutoModel`) and a value head."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = ValueHead(hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state
        return self.head(hidden)


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "hidden_size"))


def build_critic(args: PPOArgs, policy: nn.Module, policy_path: str, seed: int) -> nn.Module:
    """The value head (seeded, so a resumed run rebuilds the same one before loading) or a separate critic."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if args.critic == "value_head":
            return ValueHead(hidden_size(policy))
        from transformers import AutoModel

        from rcl.tiny_models import resolve_model

        backbone = AutoModel.from_pretrained(resolve_model(args.critic_model or policy_path))
        return SeparateCritic(backbone, backbone.config.hidden_size)


def critic_parameters(critic: nn.Module) -> list[nn.Parameter]:
    return [p for p in critic.parameters() if p.requires_grad]


def forward_with_values(model, critic, input_ids: Tensor, attention_mask: Tensor, completion_len: int,
                        temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per completion token: log-prob under the policy, the critic's value of the state before it, and (optionally)
    the policy's entropy there. Value and log-prob use the same positions (the one that predicts the token)."""
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    start = input_ids.size(1) - completion_len - 1
    from rcl.rl.loop import unwrap

    shared = isinstance(unwrap(critic), ValueHead)  # inside Fabric's wrapper (and DDP's, under DDP)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=shared)
    logits = out.logits[:, start:-1, :]
    if temperature != 1.0:
        logits = logits / temperature
    logp = token_logprobs(logits, input_ids[:, -completion_len:])
    if shared:
        values = critic(out.hidden_states[-1][:, start:-1, :])
    else:
        values = critic(input_ids, attention_mask, position_ids)[:, start:-1]
    return logp, values.float(), ppo_math.entropy(logits) if with_entropy else None


def _pad_rows(rows: list[Tensor], width: int) -> Tensor:
    out = torch.zeros(len(rows), width, dtype=rows[0].dtype, device=rows[0].device)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:width]
    return out


def row_steps(rollout, i: int, length: int) -> list[tuple[int, float]]:
    """Where row i's rewards go: each turn's reward on its last token (multi-turn), else the sequence reward on the
    last completion token."""
    turns = getattr(rollout, "turn_rewards", None)
    if turns is not None and turns[i]:
        return [(int(p), float(r)) for p, r in turns[i]]
    return [(max(length - 1, 0), float(rollout.rewards[i]))]


def train_step(fabric, state, rollout, ppo: PPOArgs, generation, optimizer_args, mask_fn, step_seed: int) -> dict:
    """`ppo_epochs` passes over mini-batches of `rollout`; one optimizer step (policy and critic) per mini-batch.

    `mask_fn(index, completion_ids) -> [b, T]` is the loop's loss mask (stop ids, truncation, environment text)."""
    from rcl.rl.loop import _pack, unwrap

    model, optimizer = state["model"], state["optimizer"]
    critic, critic_opt = state["critic"], state["critic_optimizer"]
    reference = state["ref_model"]
    pad = unwrap(model).config.pad_token_id or 0
    n, temp = len(rollout), generation.temperature
    size = local_mini_batch(ppo.mini_batch_size, fabric.world_size)
    chunks = [list(range(i, min(n, i + size))) for i in range(0, n, size)]

    def total(t: Tensor) -> Tensor:  # summed over the processes: whitening and token means span the global batch
        return fabric.all_reduce(t, reduce_op="sum") if fabric.world_size > 1 else t

    # 1. the rollout as the behaviour policy and the critic saw it (no gradients)
    old_logp, old_values, masks, rewards, dones, kls = {}, {}, {}, {}, {}, []
    kl_coef = state["kl_controller"].value if state.get("kl_controller") is not None else ppo.kl_coef
    with torch.no_grad():
        for index in chunks:
            ids, attn, comp = _pack(rollout, index, pad, fabric.device)
            mask = mask_fn(index, comp).float()
            logp, values, _ = forward_with_values(model, critic, ids, attn, comp.shape[1], temp, False)
            r, d = ppo_math.token_rewards(
                [row_steps(rollout, i, len(rollout.completions[i].token_ids)) for i in index], comp.shape[1])
            r, d = r.to(fabric.device), d.to(fabric.device)
            if reference is not None and kl_coef != 0:
                from rcl.grpo import completion_logprobs

                ref = completion_logprobs(reference, ids, attn, comp.shape[1], temp)
                kl = ppo_math.kl_per_token(logp, ref, ppo.kl_estimator) * mask
                r = r - kl_coef * kl
                kls.append((kl.sum(), mask.sum()))
            for k, i in enumerate(index):
                width = int(mask[k].nonzero().max()) + 1 if mask[k].any() else 0
                old_logp[i], old_values[i], masks[i] = logp[k, :width], values[k, :width], mask[k, :width]
                rewards[i], dones[i] = r[k, :width], d[k, :width]

    # 2. GAE per row, whitening over the whole rollout
    width = max((len(m) for m in masks.values()), default=0) or 1
    order = list(range(n))
    adv, ret = ppo_math.gae(_pad_rows([rewards[i] for i in order], width), _pad_rows([old_values[i] for i in order],
                            width), _pad_rows([dones[i] for i in order], width),
                            _pad_rows([masks[i] for i in order], width), ppo.gamma, ppo.lam)
    all_mask = _pad_rows([masks[i] for i in order], width)
    raw_adv = adv
    if ppo.whiten_advantages:
        adv = ppo_math.whiten(adv, all_mask, total=total)
    ev = ppo_math.explained_variance(_pad_rows([old_values[i] for i in order], width), ret, all_mask)

    # 3. ppo_epochs over shuffled mini-batches
    totals: dict[str, float] = {}
    updates = 0
    generator = torch.Generator().manual_seed(step_seed)
    for _ in range(ppo.ppo_epochs):
        perm = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, size):
            index = perm[start : start + size]
            ids, attn, comp = _pack(rollout, index, pad, fabric.device)
            T = comp.shape[1]
            mask = _pad_rows([masks[i] for i in index], T)
            logp, values, ent = forward_with_values(model, critic, ids, attn, T, temp, True)
            pg, pg_stats = ppo_math.policy_loss(logp, _pad_rows([old_logp[i] for i in index], T),
                                                _pad_rows([adv[i] for i in index], T), mask, ppo.clip_range)
            vl, vl_stats = ppo_math.value_loss(values, _pad_rows([old_values[i] for i in index], T),
                                               _pad_rows([ret[i] for i in index], T), mask, ppo.clip_range_value)
            mean_entropy = (ent * mask).sum() / mask.sum().clamp(min=1.0)
            loss = pg + ppo.vf_coef * vl - ppo.entropy_coef * mean_entropy
            if fabric.world_size > 1:  # every term is a mean over this process's tokens of the mini-batch
                local_tokens = mask.sum().detach()
                loss = loss * ppo_math.process_share(local_tokens, total(local_tokens.clone()), fabric.world_size)
            fabric.backward(loss)
            fabric.call("on_before_optimizer_step", fabric=fabric, state=state, optimizer=optimizer)
            if optimizer_args.max_grad_norm:
                totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(
                    fabric.clip_gradients(model, optimizer, max_norm=optimizer_args.max_grad_norm))
                fabric.clip_gradients(critic, critic_opt, max_norm=optimizer_args.max_grad_norm)
            optimizer.step()
            critic_opt.step()
            optimizer.zero_grad(set_to_none=True)
            critic_opt.zero_grad(set_to_none=True)
            updates += 1
            for name, value in {"loss": loss, "policy/loss": pg, "value/loss": vl, "policy/entropy": mean_entropy,
                                **pg_stats, **vl_stats}.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
    stats = {k: v / max(updates, 1) for k, v in totals.items()}
    state["scheduler"].step()
    if state.get("critic_scheduler") is not None:
        state["critic_scheduler"].step()

    # 4. what the critic and the returns looked like on this rollout
    stats["value/explained_variance"] = float(ev)
    stats["returns/mean"] = float((ret * all_mask).sum() / all_mask.sum().clamp(min=1.0))
    stats["advantages/mean_raw"] = float((raw_adv * all_mask).sum() / all_mask.sum().clamp(min=1.0))
    stats["value/mean"] = float(sum(v.sum() for v in old_values.values()) / max(all_mask.sum(), 1.0))
    stats["ppo/updates"] = float(updates)
    if kls:  # the global KL, so every process's controller takes the same step
        kl_sum, kl_tokens = total(torch.stack([sum(k for k, _ in kls), sum(m for _, m in kls)]).float()).tolist()
        mean_kl = kl_sum / max(kl_tokens, 1.0)
        stats["kl"] = mean_kl
        stats["kl_coef"] = kl_coef
        if state.get("kl_controller") is not None:
            state["kl_controller"].update(mean_kl, n)
    return stats


def local_mini_batch(mini_batch_size: int, world_size: int) -> int:
    """Each process's rows per update: `mini_batch_size` is counted over all processes."""
    if mini_batch_size % world_size:
        raise ValueError(f"ppo.mini_batch_size={mini_batch_size} must be divisible by the {world_size} training "
                         f"processes; use a multiple of {world_size}")
    return mini_batch_size // world_size


def setup_critic(fabric, state: dict, ppo: PPOArgs, policy_path: str, optimizer_args, max_steps: int,
                 seed: int) -> None:
    """Build the critic and its optimizer into the loop's state (before any checkpoint is loaded)."""
    from dataclasses import replace

    from rcl.optim import build_optimizer, build_scheduler
    from rcl.rl.loop import unwrap

    critic = build_critic(ppo, unwrap(state["model"]), policy_path, seed)
    args = replace(optimizer_args, learning_rate=ppo.critic_learning_rate or optimizer_args.learning_rate)
    critic_opt = build_optimizer(critic.parameters(), args)
    critic, critic_opt = fabric.setup(critic, critic_opt)
    state.update(critic=critic, critic_optimizer=critic_opt, critic_scheduler=build_scheduler(critic_opt, max_steps,
                                                                                              args))
    state["kl_controller"] = (ppo_math.AdaptiveKLController(ppo.kl_coef, ppo.target_kl, ppo.kl_horizon)
                              if ppo.adaptive_kl else None)


def checkpoint_items(state: dict) -> dict[str, Any]:
    """What a PPO run adds to the loop's checkpoint."""
    items: dict[str, Any] = {}
    if state.get("critic") is not None:
        items.update(critic=state["critic"], critic_optimizer=state["critic_optimizer"],
                     critic_scheduler=state["critic_scheduler"])
        controller = state.get("kl_controller")
        items["kl_coef"] = controller.value if controller is not None else 0.0
    return items


def export_critic(fabric, critic: nn.Module, out) -> None:
    """The critic's weights next to the exported policy (`value_head.safetensors` or `critic.safetensors`)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from rcl.rl.loop import unwrap

    inner = unwrap(critic)
    name = "value_head.safetensors" if isinstance(inner, ValueHead) else "critic.safetensors"
    if fabric.global_rank == 0:
        save_file({k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}, str(Path(out) / name))
