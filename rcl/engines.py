"""Generation engines: one small interface for every way rcl samples text.

The RL loop only ever calls `engine.generate(prompt_ids, params)`. `HFEngine` runs a transformers model in process
(KV cache, left padding, batched); the server client engine (`rcl.serving.client`) sends the same request to rcl or
TRL-compatible servers. Prompts travel as token ids so the ids that were sampled from are the ids scored in the loss.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import torch

from rcl.hf_compat import cache_kwargs

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample: the fields of TRL's /generate/ request that rcl uses."""

    max_tokens: int = 64
    """Most new tokens per completion."""
    n: int = 1
    """Completions per prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    """HF's multiplicative penalty on every token of the prompt and the completion so far (1 turns it off)."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted from a token's logit once per time the completion so far holds it."""
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from a token's logit once if the completion so far holds it."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Added to those tokens' logits at every step (OpenAI's logit_bias)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings (kept in the completion)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Extra stop ids besides the tokenizer's eos."""
    ignore_eos: bool = False
    """The tokenizer's eos does not end the completion (stop_token_ids and stop strings still do), as benchmark
    clients ask for fixed-length completions."""
    min_tokens: int = 0
    """No stop id can be sampled before the completion has this many tokens."""
    seed: int | None = None
    """Seed for this request; None draws from the global generator."""
    top_logprobs: int = 0
    """Alternatives per generated token: its k most likely tokens under the distribution it was sampled from, with
    their log-probs (`Completion.top_logprobs`); 0 gives none."""


@dataclass
class Completion:
    token_ids: list[int]
    """Generated ids, ending with the stop token when finish_reason is 'stop'; never padded."""
    logprobs: list[float] | None
    """Log-prob of each generated id under the sampling distribution (after temperature and filters)."""
    finish_reason: FinishReason
    text: str
    weights_version: int | None = None
    """The optimizer step whose weights sampled it (set by the RL loop's policy engine; None elsewhere)."""
    top_logprobs: list[list[tuple[int, float]]] | None = None
    """With `SamplingParams.top_logprobs` k: per generated token, the k most likely (id, log-prob) pairs of the
    distribution it was sampled from, most likely first; tokens of probability zero are left out."""


@runtime_checkable
class GenerationEngine(Protocol):
    tokenizer: Any

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each prompt, in prompt order."""
        ...


def stop_ids(tokenizer: Any, params: SamplingParams) -> list[int]:
    ids = list(params.stop_token_ids)
    if not params.ignore_eos and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def trim_completion(
    ids: Sequence[int], logprobs: Sequence[float] | None, tokenizer: Any, params: SamplingParams,
    top_logprobs: Sequence[list[tuple[int, float]]] | None = None,
) -> Completion:
    """Cut a raw generated row after its first stop id or stop string; what remains is unpadded."""
    ids = list(ids)
    stops = set(stop_ids(tokenizer, params))
    end, reason = len(ids), "length"
    for i, t in enumerate(ids):
        if t in stops:
            end, reason = i + 1, "stop"
            break
    if params.stop and reason == "length":
        for i in range(1, len(ids) + 1):
            piece = tokenizer.decode(ids[:i], skip_special_tokens=False)
            if any(s in piece for s in params.stop):
                end, reason = i, "stop"
                break
    ids = ids[:end]
    lps = list(logprobs[:end]) if logprobs is not None else None
    top = list(top_logprobs[:end]) if top_logprobs is not None else None
    return Completion(ids, lps, reason, tokenizer.decode(ids, skip_special_tokens=True), top_logprobs=top)


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of `probs` [R, V] (non-negative, any positive row sum), drawn exactly from the row's
    distribution by inverting its cumulative sum at one uniform per row.

    `torch.multinomial` draws one exponential per vocabulary entry: 8% of tiny-1m's sampling time (0.55 ms per call
    on [64, 404], torch.profiler), against R uniforms here. A token of probability zero is never returned; a row
    that is NaN, infinite or all zero is refused, as `multinomial` refuses it.
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    if not bool(torch.isfinite(total).all() & (total > 0).all()):
        raise ValueError("invalid distribution: a row's probabilities are NaN, infinite or all zero")
    drawn = torch.searchsorted(cdf, torch.rand_like(total) * total, right=True)
    # u * total can round up to total; the first index that reaches the total is the last token with mass.
    last = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(drawn, last).squeeze(1)


@contextlib.contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class HFEngine:
    """In-process generation from a transformers model: rcl's own KV-cache sampling loop over HF's logits processors
    (left padding, one prefill per distinct prompt, finished rows leave the batch; stop ids and stop strings).

    `model` may be the live policy: generation reads its current weights, so in-process rollouts are always on-policy.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        if params.n < 1 or params.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={params.n}, max_tokens={params.max_tokens}")
        was_training = self.model.training
        self.model.eval()
        out: list[list[Completion]] = []
        try:
            with _seeded(params.seed):
                per_chunk = max(1, self.max_batch_size // params.n)
                for start in range(0, len(prompts), per_chunk):
                    out.extend(self._generate_chunk(prompts[start : start + per_chunk], params))
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        greedy = params.temperature == 0
        if greedy and params.n > 1:
            # transformers refuses num_return_sequences > 1 without sampling; greedy copies are identical anyway.
            prompts = [p for p in prompts for _ in range(params.n)]
            rows = self._generate_chunk(prompts, replace(params, n=1))
            return [[r[0] for r in rows[i : i + params.n]] for i in range(0, len(rows), params.n)]
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError("empty prompt")
            input_ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            attention[i, width - len(p) :] = 1
        new, logps, top = self._sample(input_ids.to(device), attention.to(device), params)
        new_rows, logp_rows = new.tolist(), logps.tolist()
        top_rows = _top_pairs(*top) if top is not None else [None] * len(new_rows)
        rows = [trim_completion(new_rows[i], logp_rows[i], self.tokenizer, params, top_rows[i])
                for i in range(len(new_rows))]
        return [rows[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _sample(
        self, input_ids: torch.Tensor, attention: torch.Tensor, params: SamplingParams
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """A KV-cache sampling loop: each distinct prompt is prefilled once and its cache copied to its `n` rows;
        rows that reached a stop id or a stop string leave the batch, so finished completions cost nothing.

        The same distribution as HF generate (the same logits processors; an exact draw from the processed
        distribution, `sample_categorical`, where HF calls `multinomial`, so the same seed gives other tokens) and
        the same behaviour log-probs (log-softmax of the processed logits). Returns `[B*n, steps]` ids, padded with
        the pad id after a stop, their log-probs, and (with `params.top_logprobs` k) the k most likely ids and their
        log-probs at every step, `[B*n, steps, k]` each.
        """
        from rcl.kv_cache import preallocated_cache

        n, rows = params.n, input_ids.shape[0] * params.n
        device = input_ids.device
        processors = _logits_processors(params, input_ids.shape[1], stop_ids(self.tokenizer, params))
        stops = torch.tensor(stop_ids(self.tokenizer, params), device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = preallocated_cache(self.model.config, input_ids.shape[1] + params.max_tokens)
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **cache_kwargs(self.model, cache))
        logits = out.logits[:, -1, :].float().repeat_interleave(n, dim=0)
        if n > 1:
            cache.batch_repeat_interleave(n)
        attention = attention.repeat_interleave(n, dim=0)
        seen = input_ids.repeat_interleave(n, dim=0)  # prompt + generated ids, for the repetition penalty
        next_pos = positions[:, -1:].repeat_interleave(n, dim=0) + 1

        tokens = torch.full((rows, params.max_tokens), self.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((rows, params.max_tokens), dtype=torch.float32, device=device)
        k = min(params.top_logprobs, logits.shape[-1])
        top_ids = torch.zeros((rows, params.max_tokens, k), dtype=torch.long, device=device)
        top_logps = torch.full((rows, params.max_tokens, k), float("-inf"), device=device)
        active = torch.arange(rows, device=device)
        for step in range(params.max_tokens):
            scores = processors(seen, logits) if processors else logits
            logprobs = scores.log_softmax(-1)
            if params.temperature == 0:
                chosen = scores.argmax(-1)
            else:
                chosen = sample_categorical(logprobs.exp())
            tokens[active, step] = chosen
            logps[active, step] = logprobs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
            if k:
                top_logps[active, step], top_ids[active, step] = logprobs.topk(k, dim=-1)
            if step == params.max_tokens - 1:
                break
            running = ~torch.isin(chosen, stops)
            if params.stop:
                running &= ~self._stop_string_ended(tokens[active, : step + 1], params.stop)
            if not bool(running.any()):
                break
            if not bool(running.all()):
                keep = running.nonzero().squeeze(1)
                active, chosen, attention, seen, next_pos = (
                    active[keep], chosen[keep], attention[keep], seen[keep], next_pos[keep]
                )
                cache.batch_select_indices(keep)
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            seen = torch.cat([seen, chosen.unsqueeze(1)], dim=1)
            out = self.model(input_ids=chosen.unsqueeze(1), attention_mask=attention, position_ids=next_pos,
                             use_cache=True, **cache_kwargs(self.model, cache))
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1
        return tokens.cpu(), logps.cpu(), (top_ids.cpu(), top_logps.cpu()) if k else None

    def _stop_string_ended(self, generated: torch.Tensor, stop: list[str]) -> torch.Tensor:
        """Per row of `generated` [R, T]: whether its text now holds a stop string, as vLLM matches them (in the
        completion's text, not the prompt's). Only the last tokens are decoded, enough to hold the longest stop
        string (a character is at most four byte tokens); a stop string that ended earlier stopped its row then."""
        window = 4 * max(len(s) for s in stop) + 2
        texts = self.tokenizer.batch_decode(generated[:, -window:].tolist(), skip_special_tokens=False)
        return torch.tensor([any(s in text for s in stop) for text in texts], device=generated.device)


def _top_pairs(ids: torch.Tensor, logprobs: torch.Tensor) -> list[list[list[tuple[int, float]]]]:
    """`[R, T, k]` alternatives as per-row, per-step (id, log-prob) lists, without the zero-probability ones."""
    return [[[(i, lp) for i, lp in zip(step_ids, step_lps) if lp != float("-inf")]
             for step_ids, step_lps in zip(row_ids, row_lps)]
            for row_ids, row_lps in zip(ids.tolist(), logprobs.tolist())]


class CompletionPenalties:
    """OpenAI's frequency and presence penalties, over the tokens generated so far (not the prompt's), as vLLM
    applies them. No HF processor does this: HF's repetition penalty is multiplicative and counts the prompt. (A
    logits processor by HF's calling convention; not a subclass, so that importing rcl.engines stays cheap.)"""

    def __init__(self, prompt_width: int, frequency: float, presence: float):
        self.prompt_width, self.frequency, self.presence = prompt_width, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def _logits_processors(params: SamplingParams, prompt_width: int, stops: list[int]):
    """The processors of the distribution sampled from, in vLLM's order: `min_tokens` (the `stops` ids forbidden
    until then), logit bias and penalties on the raw logits, then temperature, top-k, top-p and min-p (HF's own
    classes where HF has one). `prompt_width` is the (padded) prompt's length, after which the processors'
    `input_ids` hold the completion so far."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        SequenceBiasLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out = LogitsProcessorList()
    if params.min_tokens and stops:
        out.append(MinNewTokensLengthLogitsProcessor(prompt_width, params.min_tokens, stops))
    if params.logit_bias:
        out.append(SequenceBiasLogitsProcessor([[[token], bias] for token, bias in params.logit_bias.items()]))
    if params.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.frequency_penalty or params.presence_penalty:
        out.append(CompletionPenalties(prompt_width, params.frequency_penalty, params.presence_penalty))
    if params.temperature == 0:
        return out
    if params.temperature != 1.0:
        out.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        out.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        out.append(TopPLogitsWarper(params.top_p))
    if params.min_p > 0:
        out.append(MinPLogitsWarper(params.min_p))
    return out
