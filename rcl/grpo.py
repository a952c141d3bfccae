"""The maths of the GRPO phase as small pure torch functions: advantages, masks, log-probs, KL, clipped surrogate and
TRL's four loss normalisations.

Tensor layout used throughout: `B` completions (rows), `T` completion positions, `V` vocabulary. Rows come in
contiguous groups of `G` completions of the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rcl.hf_compat import cache_kwargs

AdvantageScale = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ISCorrection = Literal["off", "tis", "mis", "tis_mis"]

LOGSUMEXP_CHUNK = 1 << 22
"""Most logits `selective_log_softmax` reduces in one call (16 MiB in fp32)."""


def group_advantages(
    rewards: Tensor, group_size: int, scale: AdvantageScale = "group", eps: float = 1e-4,
    batch_std: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Group-relative advantages A = (r - mean_group) / (std + eps) over contiguous groups of `group_size`.

    `scale`: "group" divides by each group's unbiased std, "batch" by the unbiased std of all N rewards (or by
    `batch_std`, the std of the batch gathered from every process), "none" only centres. Returns `(advantages[N], zero_std[N // group_size])`; `zero_std` marks groups whose rewards are all equal
    (they carry no learning signal; logged as `frac_reward_zero_std`).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group needs a baseline), got {group_size}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    group_std = grouped.std(dim=1, keepdim=True)
    zero_std = torch.isclose(group_std.squeeze(1), torch.zeros_like(group_std.squeeze(1)))
    if scale == "group":
        advantages = centred / (group_std + eps)
    elif scale == "batch":
        advantages = centred / ((rewards.std() if batch_std is None else batch_std) + eps)
    elif scale == "none":
        advantages = centred
    else:
        raise ValueError(f"unknown advantage scale {scale!r}; choose group, batch or none")
    return advantages.reshape(-1), zero_std


def _stop_hits(completion_ids: Tensor, stop_ids: Sequence[int], lengths: Tensor | None) -> Tensor:
    if len(stop_ids) == 0:
        raise ValueError("stop_ids is empty: give at least one stop token id")
    hits = torch.isin(completion_ids, torch.as_tensor(list(stop_ids), device=completion_ids.device))
    if lengths is not None:
        hits &= _positions(completion_ids) < lengths.to(completion_ids.device)[:, None]
    return hits


def _positions(completion_ids: Tensor) -> Tensor:
    return torch.arange(completion_ids.size(1), device=completion_ids.device)[None, :]


def completion_mask(
    completion_ids: Tensor,
    stop_ids: Sequence[int],
    pad_id: int | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """Float mask [B, T]: 1 up to and including the first occurrence of ANY id in `stop_ids`, 0 after.

    Rows without a stop id stay 1 everywhere, except that `lengths` (true completion lengths, e.g. from the engine)
    zeroes positions >= length and `pad_id` zeroes a trailing run of padding (a pad id that is itself the first stop
    is kept as the stop token).
    """
    hits = _stop_hits(completion_ids, stop_ids, lengths)
    width = completion_ids.size(1)
    first_stop = torch.where(hits.any(dim=1), hits.int().argmax(dim=1), width)
    positions = _positions(completion_ids)
    mask = positions <= first_stop[:, None]
    if lengths is not None:
        mask &= positions < lengths.to(completion_ids.device)[:, None]
    if pad_id is not None:
        trailing_pad = (completion_ids == pad_id).flip(1).int().cumprod(dim=1).flip(1).bool()
        mask &= ~trailing_pad | (positions == first_stop[:, None])
    return mask.float()


def truncated_rows(completion_ids: Tensor, stop_ids: Sequence[int], lengths: Tensor | None = None) -> Tensor:
    """Bool [B]: rows that contain no stop id (within `lengths` when given), i.e. hit the token budget."""
    return ~_stop_hits(completion_ids, stop_ids, lengths).any(dim=1)


def mask_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """Zero the mask rows of truncated completions (TRL's `mask_truncated_completions`)."""
    return mask * (~truncated).to(mask.dtype)[:, None]


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """log_softmax(logits)[..., index] for logits [B, T, V] and index [B, T] without materialising [B, T, V] twice.

    fp32/fp64: gathered logit minus a logsumexp over chunks of rows. bf16/fp16: log_softmax over chunks of rows,
    because logsumexp in half precision is inaccurate enough to matter. A chunk holds at most `LOGSUMEXP_CHUNK`
    logits, so the temporaries stay small for a large vocabulary, and a small one takes a few calls instead of
    one per row.
    """
    rows = max(1, LOGSUMEXP_CHUNK // max(1, logits[0].numel()))
    if logits.dtype in (torch.float32, torch.float64):
        selected = logits.gather(dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        logsumexp = torch.cat([torch.logsumexp(chunk, dim=-1) for chunk in logits.split(rows)])
        return selected - logsumexp
    return torch.cat([
        F.log_softmax(chunk, dim=-1).gather(dim=-1, index=chunk_index.unsqueeze(-1)).squeeze(-1)
        for chunk, chunk_index in zip(logits.split(rows), index.split(rows))
    ])


def token_logprobs(logits: Tensor, target_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probs [B, T] of `target_ids` under softmax(logits / temperature), i.e. of the distribution sampled from."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    if temperature != 1.0:
        logits = logits / temperature
    return selective_log_softmax(logits, target_ids)


def completion_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_len: int,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token log-probs [B, T] of the completion tokens.

    Layout: `input_ids` [B, P + T] is the left-padded prompt followed by the right-padded completion, so every
    completion starts at column P. Only the logits that predict completion tokens are computed. Position ids are
    derived from `attention_mask` the way HF `generate` derives them, so a left-padded row gets the log-probs it was
    sampled with.

    Rows that share a prompt (a GRPO group) run that prompt once: the prompt is encoded per distinct prompt, its
    KV cache is gathered to every row, and the completions run on top of it (`shared_prompt_logprobs`). The result
    and its gradient are those of one forward over every full row; models that cannot take a cache with gradients
    (gradient checkpointing, sharded or DDP wrappers) always take the one-forward path.
    """
    if not 0 < completion_len < input_ids.size(1):
        raise ValueError(f"completion_len {completion_len} must be in [1, {input_ids.size(1) - 1}] (needs a prompt)")
    position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    prompt_len = input_ids.size(1) - completion_len
    if _can_share_prompts(model):
        prompts = torch.cat([input_ids[:, :prompt_len], attention_mask[:, :prompt_len].long()], dim=1)
        unique, inverse = torch.unique(prompts, dim=0, return_inverse=True)
        if unique.size(0) < input_ids.size(0):
            first = torch.full((unique.size(0),), input_ids.size(0), dtype=torch.long, device=input_ids.device)
            first = first.scatter_reduce(0, inverse, torch.arange(input_ids.size(0), device=input_ids.device), "amin")
            return shared_prompt_logprobs(model, input_ids, attention_mask, position_ids, completion_len,
                                          first, inverse, temperature)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=completion_len + 1,
    ).logits[:, :-1, :]
    return token_logprobs(logits, input_ids[:, -completion_len:], temperature)


def _can_share_prompts(model: Any) -> bool:
    """Only a plain transformers model in a single process takes a differentiable prompt cache safely (DDP, FSDP
    and DeepSpeed hook a single forward per backward; gradient checkpointing drops the cache)."""
    from transformers import PreTrainedModel

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    inner = getattr(model, "_forward_module", model)  # Lightning Fabric's wrapper
    if not isinstance(inner, PreTrainedModel):
        return False
    # transformers 5 renamed the flag; the old name warns
    name = "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return not getattr(inner, name)


def shared_prompt_logprobs(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    completion_len: int,
    first: Tensor,
    inverse: Tensor,
    temperature: float,
) -> Tensor:
    """`completion_logprobs` computing each distinct prompt once: row `first[u]` carries prompt u, `inverse[b]` is
    row b's prompt. The prompt's cache is gathered to every row (a differentiable index), so gradients flow back
    through the shared prompt exactly as they would through G separate copies."""
    from transformers import DynamicCache

    prompt_len = input_ids.size(1) - completion_len
    cache = DynamicCache()
    prefix = model(
        input_ids=input_ids[first, :prompt_len],
        attention_mask=attention_mask[first, :prompt_len],
        position_ids=position_ids[first, :prompt_len],
        use_cache=True,
        **cache_kwargs(model, cache),
        logits_to_keep=1,
    )
    logits = prefix.logits[inverse, -1:, :]  # predicts the first completion token
    if completion_len > 1:
        cache.batch_select_indices(inverse)
        rest = model(
            input_ids=input_ids[:, prompt_len:-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, prompt_len:-1],
            use_cache=True,
            **cache_kwargs(model, cache),
        )
        logits = torch.cat([logits, rest.logits], dim=1)
    return token_logprobs(logits, input_ids[:, -completion_len:], temperature)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (always >= 0)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped objective per token: -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A).

    `advantages` is per sequence [B]. Stats are bool per-token indicators: `low` (rho below the range with A < 0),
    `high` (rho above it with A > 0) and `region` (either); on those tokens the gradient is zero.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
    per_token_loss = -torch.min(unclipped, clipped)
    low = (ratio < 1 - epsilon_low) & (adv < 0)
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    return per_token_loss, {"low": low, "high": high, "region": low | high}


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    loss_type: LossType,
    *,
    max_completion_length: int,
    num_micro_batches: int,
    tokens_per_process: float | None,
    rows_per_process: int | None = None,
) -> Tensor:
    """Reduce per-token losses [B, T] to the scalar to backpropagate for one of `num_micro_batches` micro-batches.

    - grpo: sum over sequences of (sum l*M / sum M) / rows_per_process: the mean over all of this process's sequences
      once the micro-batches are summed, whatever their sizes (length-biased). Without `rows_per_process`, every
      micro-batch is taken to have B rows.
    - bnpo: sum l*M / sum M over this micro-batch, / num_micro_batches.
    - dr_grpo: sum l*M / (rows_per_process * max_completion_length), rows_per_process defaulting as for grpo.
    - dapo: sum l*M / tokens_per_process, where tokens_per_process = active completion tokens of the whole accumulated
      global batch / world size; no division by num_micro_batches (the normaliser already spans them).
    Empty masks give 0, never NaN.
    """
    if num_micro_batches < 1:
        raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    rows = rows_per_process if rows_per_process is not None else per_token_loss.size(0) * num_micro_batches
    if loss_type == "grpo":
        per_sequence = masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
        return per_sequence.sum() / max(rows, 1)
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0) / num_micro_batches
    if loss_type == "dr_grpo":
        if max_completion_length < 1:
            raise ValueError(f"dr_grpo needs max_completion_length >= 1, got {max_completion_length}")
        return masked.sum() / (max(rows, 1) * max_completion_length)
    if loss_type == "dapo":
        if tokens_per_process is None or tokens_per_process < 0:
            raise ValueError(
                f"dapo needs tokens_per_process >= 0 (global active tokens / world size), got {tokens_per_process}"
            )
        return masked.sum() / (tokens_per_process if tokens_per_process > 0 else 1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose grpo, bnpo, dr_grpo or dapo")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over positions where mask is 1 (0 for an empty mask)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sampler_log_ratio(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> Tensor:
    """log(pi_trainer / pi_sampler) per token [B, T], 0 outside the mask (where the sampler's log-probs are padding).

    `trainer_logp` is the trainer's detached log-prob of each sampled token (the current weights, or the first
    pass's when `num_iterations` > 1), `sampler_logp` the one the engine reported for the distribution it drew from.
    """
    return (trainer_logp.detach() - sampler_logp) * mask.to(trainer_logp.dtype)


def truncated_is_weights(log_ratio: Tensor, cap: float) -> Tensor:
    """Token-level truncated importance sampling (TIS): min(pi_trainer / pi_sampler, cap), detached. The cap bounds
    the variance a token the sampler found unlikely would add."""
    if cap <= 0:
        raise ValueError(f"the TIS cap must be > 0, got {cap}")
    return torch.exp(log_ratio.detach()).clamp(max=cap)


def sequence_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence geometric-mean ratio exp(mean over active tokens of the log ratio) [B] (1 for an empty row):
    length-normalised, so a long sequence is not masked for the product of many small per-token mismatches."""
    mask = mask.to(log_ratio.dtype)
    return torch.exp((log_ratio * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0))


def masked_is_rows(log_ratio: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """Sequence-level masked importance sampling (MIS): bool [B], True for the rows to keep, i.e. whose
    `sequence_ratio` lies in [1 / threshold, threshold]; rows outside it are outliers (a sampler that disagrees with
    the trainer on the whole sequence) and leave the loss."""
    if threshold < 1:
        raise ValueError(f"the MIS threshold must be >= 1, got {threshold}")
    ratio = sequence_ratio(log_ratio, mask)
    return (ratio >= 1.0 / threshold) & (ratio <= threshold)


def importance_correction(
    trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, mode: ISCorrection, cap: float, threshold: float,
) -> tuple[Tensor | None, Tensor, dict[str, Tensor]]:
    """The off-policy correction of one micro-batch: `(token_weights or None, mask, stats)`.

    tis: token weights min(ratio, cap); mis: the mask loses the rows `masked_is_rows` rejects; tis_mis: both; off:
    neither (stats are still measured). Stats (detached; token means over the input mask): `is/ratio_mean`,
    `is/ratio_min`, `is/ratio_max`, `is/log_ratio_abs_mean` (how far sampler and trainer are apart),
    `is/truncated_frac` (tokens whose ratio exceeds the cap), `is/masked_rows_frac` (rows MIS removes, or would).
    """
    if mode not in ("off", "tis", "mis", "tis_mis"):
        raise ValueError(f"unknown importance-sampling correction {mode!r}; choose off, tis, mis or tis_mis")
    log_ratio = sampler_log_ratio(trainer_logp, sampler_logp, mask)
    ratio = torch.exp(log_ratio)
    active = mask.bool()
    kept = masked_is_rows(log_ratio, mask, threshold)
    has_tokens = bool(active.any())
    stats = {
        "is/ratio_mean": masked_mean(ratio, mask),
        "is/ratio_min": ratio[active].min() if has_tokens else ratio.new_tensor(1.0),
        "is/ratio_max": ratio[active].max() if has_tokens else ratio.new_tensor(1.0),
        "is/log_ratio_abs_mean": masked_mean(log_ratio.abs(), mask),
        "is/truncated_frac": masked_mean((ratio > cap).to(ratio.dtype), mask),
        "is/masked_rows_frac": 1.0 - kept.to(ratio.dtype).mean(),
    }
    weights = truncated_is_weights(log_ratio, cap) if mode in ("tis", "tis_mis") else None
    if mode in ("mis", "tis_mis"):
        mask = mask * kept.to(mask.dtype)[:, None]
    return weights, mask, {k: v.detach() for k, v in stats.items()}


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    beta: float,
    epsilon_low: float,
    epsilon_high: float,
    loss_type: LossType,
    max_completion_length: int,
    num_micro_batches: int,
    tokens_per_process: float | None,
    rows_per_process: int | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate + beta * k3 KL per token, aggregated by `loss_type` (see `aggregate_loss`).

    `old_logp=None` means on-policy (old = logp.detach(), ratio 1). The KL term is added only when beta != 0 and
    `ref_logp` is given. `is_weights` [B, T] (see `importance_correction`) multiply the surrogate of each token,
    not the KL term (which is measured on the trainer's own log-probs). Stats (detached, means over active tokens of this micro-batch): `kl` (when `ref_logp` is
    given), `clip_ratio/low_mean`, `clip_ratio/high_mean`, `clip_ratio/region_mean`.
    """
    if old_logp is None:
        old_logp = logp.detach()
    per_token_loss, clipped = clipped_surrogate(logp, old_logp, advantages, epsilon_low, epsilon_high)
    if is_weights is not None:
        per_token_loss = per_token_loss * is_weights
    stats: dict[str, Tensor] = {}
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        if beta != 0:
            per_token_loss = per_token_loss + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask)
    for name, indicator in clipped.items():
        stats[f"clip_ratio/{name}_mean"] = masked_mean(indicator.to(logp.dtype), mask).detach()
    loss = aggregate_loss(
        per_token_loss,
        mask,
        loss_type,
        max_completion_length=max_completion_length,
        num_micro_batches=num_micro_batches,
        tokens_per_process=tokens_per_process,
        rows_per_process=rows_per_process,
    )
    return loss, stats
