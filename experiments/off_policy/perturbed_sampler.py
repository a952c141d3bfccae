"""Does the importance-sampling correction undo a perturbed sampler? An exact experiment on CPU.

The policy is a toy autoregressive-free model: `L` positions, each an independent softmax over `V` tokens with logits
theta[L, V]. The sampler draws from the same logits at another temperature (the mismatch of a server that samples
differently from the trainer). The reward is `count` (the positions that hold token 0: additive over positions) or
`match` (1 when the first and last tokens agree: a reward no single token decides); advantages are r - E_pi[r].

Every estimator's *expected* gradient is computed exactly by enumerating all V**L sequences, weighting each row by
the probability of drawing it (folded into its advantage, since the surrogate is linear in A), through rcl's own
`grpo_loss` and `importance_correction`. So the numbers carry no sampling noise: they are the bias of each estimator
against the on-policy gradient.

    python -m experiments.off_policy.perturbed_sampler
"""

from __future__ import annotations

import argparse
import itertools

import torch

from rcl.grpo import grpo_loss, importance_correction


def enumerate_sequences(length: int, vocab: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long)


def token_logprobs(theta: torch.Tensor, seqs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(theta / temperature, dim=-1)  # [L, V]
    return logp[torch.arange(seqs.size(1))[None, :], seqs]  # [N, L]


def expected_gradient(theta: torch.Tensor, seqs: torch.Tensor, row_prob: torch.Tensor, advantages: torch.Tensor,
                      sampler_logp: torch.Tensor | None, mode: str, cap: float, threshold: float) -> torch.Tensor:
    """E_{y ~ row_prob}[grad of rcl's per-sequence GRPO loss], with the correction `mode` against `sampler_logp`."""
    theta = theta.detach().clone().requires_grad_(True)
    logp = token_logprobs(theta, seqs)
    mask = torch.ones_like(logp)
    weights = None
    if sampler_logp is not None:
        weights, mask, _ = importance_correction(logp.detach(), sampler_logp, mask, mode, cap, threshold)
    loss, _ = grpo_loss(logp, None, None, advantages * row_prob * len(seqs), mask, beta=0.0, epsilon_low=0.2,
                        epsilon_high=0.2, loss_type="grpo", max_completion_length=seqs.size(1), num_micro_batches=1,
                        tokens_per_process=None, is_weights=weights)
    loss.backward()
    return theta.grad.detach()


def reward_of(seqs: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "count":
        return (seqs == 0).sum(-1).to(torch.float64)
    if kind == "match":
        return (seqs[:, 0] == seqs[:, -1]).to(torch.float64)
    raise ValueError(f"unknown reward {kind!r}; choose count or match")


def run(length: int = 3, vocab: int = 4, sampler_temperature: float = 1.5, cap: float = 2.0,
        threshold: float = 2.0, seed: int = 0, reward: str = "count") -> dict[str, dict[str, float]]:
    theta = torch.randn(length, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    seqs = enumerate_sequences(length, vocab)
    pi = token_logprobs(theta, seqs).sum(-1).exp()
    sampler_logp = token_logprobs(theta, seqs, sampler_temperature)
    q = sampler_logp.sum(-1).exp()
    rewards = reward_of(seqs, reward)
    advantages = rewards - (pi * rewards).sum()
    target = expected_gradient(theta, seqs, pi, advantages, None, "off", cap, threshold)
    estimators = {
        "on-policy": (pi, None, "off", cap),
        "uncorrected": (q, sampler_logp, "off", cap),
        f"tis (cap {cap:g})": (q, sampler_logp, "tis", cap),
        f"tis_mis (cap {cap:g}, threshold {threshold:g})": (q, sampler_logp, "tis_mis", cap),
        "tis (no cap)": (q, sampler_logp, "tis", float("inf")),
    }
    out = {}
    for name, (prob, lp, mode, c) in estimators.items():
        grad = expected_gradient(theta, seqs, prob, advantages, lp, mode, c, threshold)
        out[name] = {
            "relative_error": float((grad - target).norm() / target.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(grad.flatten(), target.flatten(), dim=0)),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=3)
    p.add_argument("--vocab", type=int, default=4)
    p.add_argument("--sampler-temperature", type=float, default=1.5)
    p.add_argument("--cap", type=float, default=2.0)
    p.add_argument("--threshold", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward", choices=("count", "match"), default="count")
    a = p.parse_args()
    rows = run(a.length, a.vocab, a.sampler_temperature, a.cap, a.threshold, a.seed, a.reward)
    print(f"trainer temperature 1, sampler temperature {a.sampler_temperature:g}, {a.vocab}**{a.length} sequences, "
          f"reward {a.reward}, seed {a.seed}")
    print(f"{'estimator':45s} {'|g - g*| / |g*|':>16s} {'cosine':>8s}")
    for name, r in rows.items():
        print(f"{name:45s} {r['relative_error']:16.4f} {r['cosine']:8.4f}")


if __name__ == "__main__":
    main()
