"""Log-probs of the tokens of a given sequence, as vLLM's `prompt_logprobs` reports them (TRL's
`VLLMClient.get_sequence_logprobs` scores a teacher's distribution over existing sequences with them).

For each position after the first: the log-prob of the token actually there, with its rank (1 = the most likely),
plus the `top_k` most likely tokens with theirs. Raw log-probs of the model's logits, without temperature, as vLLM's
default `logprobs_mode` (`raw_logprobs`) returns them. Position 0 has none (nothing predicts it): None.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

PositionLogprobs = dict[int, tuple[float, int]]
"""token id -> (log-prob, rank)."""


@torch.no_grad()
def sequence_logprobs(model: Any, ids: Sequence[int], top_k: int) -> list[PositionLogprobs | None]:
    """One sequence's per-position log-probs (module docstring); `top_k` 0 gives the actual tokens' only."""
    device = next(model.parameters()).device
    tokens = torch.tensor([list(ids)], device=device)
    logits = model(input_ids=tokens).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    actual = tokens[0, 1:]
    actual_logprobs = logprobs.gather(1, actual[:, None])[:, 0]
    ranks = (logprobs > actual_logprobs[:, None]).sum(dim=1) + 1
    top = torch.topk(logprobs, min(top_k, logprobs.size(1)), dim=1) if top_k > 0 else None
    positions: list[PositionLogprobs | None] = [None]
    for p in range(actual.numel()):
        entry: PositionLogprobs = {}
        if top is not None:
            for rank, (value, token) in enumerate(zip(top.values[p].tolist(), top.indices[p].tolist()), start=1):
                entry[token] = (value, rank)
        entry[int(actual[p])] = (float(actual_logprobs[p]), int(ranks[p]))
        positions.append(entry)
    return positions


def as_vllm_json(positions: list[PositionLogprobs | None], tokenizer: Any) -> list[dict[str, dict] | None]:
    """The shape of vLLM's `choices[].prompt_logprobs`: {token id as a string: {logprob, rank, decoded_token}}."""
    return [None if entry is None else
            {str(token): {"logprob": value, "rank": rank, "decoded_token": tokenizer.decode([token])}
             for token, (value, rank) in entry.items()}
            for entry in positions]
