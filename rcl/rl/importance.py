"""Which importance-sampling correction a run uses, and the sampler's log-probs laid out for the loss."""

from __future__ import annotations

import torch

from rcl.grpo import ISCorrection
from rcl.rl.args import EnginesArgs, GRPOArgs
from rcl.rl.rollout import Rollout


def resolve_correction(grpo: GRPOArgs, engines: EnginesArgs) -> ISCorrection:
    """`auto`: tis_mis wherever the sampler may differ from the trainer (teacher servers, asynchronous rollouts),
    off where it is the trainer itself (synchronous in-process generation)."""
    if grpo.importance_sampling != "auto":
        return grpo.importance_sampling
    off_policy = engines.teacher.backend == "server" or grpo.max_off_policy_steps > 0
    return "tis_mis" if off_policy else "off"


def sampler_logprobs(rollout: Rollout, index: list[int], width: int, device) -> torch.Tensor:
    """[len(index), width] log-probs the engine reported for each sampled token (0 past a completion's end)."""
    out = torch.zeros((len(index), width), dtype=torch.float32)
    for row, i in enumerate(index):
        completion = rollout.completions[i]
        if completion.logprobs is None:
            raise ValueError("the importance-sampling correction needs the sampler's log-probs, and this engine "
                             "returned none: use a server that returns them (rcl serve, TRL >= 1.0 vllm-serve) or set "
                             "grpo.importance_sampling: off")
        lps = completion.logprobs[:width]
        out[row, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
    return out.to(device)
