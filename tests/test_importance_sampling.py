"""Importance-sampling correction against the sampler's own log-probs: TIS weights, MIS row masks, the stats, the
loss they feed, and the exact perturbed-sampler experiment."""

import math

import pytest
import torch

from experiments.off_policy.perturbed_sampler import run
from rcl.grpo import (
    grpo_loss,
    importance_correction,
    masked_is_rows,
    sampler_log_ratio,
    sequence_ratio,
    truncated_is_weights,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_log_ratio_is_trainer_minus_sampler_inside_the_mask():
    trainer = torch.tensor([[-1.0, -2.0, -3.0]])
    sampler = torch.tensor([[-1.5, -2.0, 0.0]])  # the last position is padding
    torch.testing.assert_close(sampler_log_ratio(trainer, sampler, torch.tensor([[1.0, 1.0, 0.0]])),
                               torch.tensor([[0.5, 0.0, 0.0]]))


def test_tis_weights_are_the_ratio_capped():
    # ratios 2, 1/2, 3 with cap 2.5 -> 2, 0.5, 2.5
    weights = truncated_is_weights(torch.tensor([[LN2, -LN2, LN3]]), cap=2.5)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 0.5, 2.5]]))
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(torch.zeros(1, 1), cap=0)


def test_sequence_ratio_is_the_geometric_mean_over_active_tokens():
    # row 0: log ratios ln2, ln2, (masked 5) -> exp(ln2) = 2; row 1: ln3, -ln3 -> 1; row 2: empty -> 1
    log_ratio = torch.tensor([[LN2, LN2, 5.0], [LN3, -LN3, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(sequence_ratio(log_ratio, mask), torch.tensor([2.0, 1.0, 1.0]))


def test_mis_keeps_rows_whose_sequence_ratio_is_inside_the_threshold():
    # geometric means 3, 1/3, 1.5, 1 with threshold 2: only the two outliers leave
    log_ratio = torch.tensor([[LN3], [-LN3], [math.log(1.5)], [0.0]])
    kept = masked_is_rows(log_ratio, torch.ones(4, 1), threshold=2.0)
    assert kept.tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="threshold"):
        masked_is_rows(log_ratio, torch.ones(4, 1), threshold=0.5)


def test_correction_modes_and_their_stats():
    trainer = torch.tensor([[LN3, 0.0], [0.0, 0.0]])  # sampler log-probs 0: log ratios = trainer's
    sampler = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # ratios on active tokens: 3, 1, 1; row 0's geometric mean sqrt(3) = 1.732 (kept at threshold 1.5? no: > 1.5)
    weights, out_mask, stats = importance_correction(trainer, sampler, mask, "tis_mis", cap=2.0, threshold=1.5)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(out_mask, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(stats["is/ratio_mean"], torch.tensor(5.0 / 3.0))
    torch.testing.assert_close(stats["is/ratio_min"], torch.tensor(1.0))
    torch.testing.assert_close(stats["is/ratio_max"], torch.tensor(3.0))
    torch.testing.assert_close(stats["is/log_ratio_abs_mean"], torch.tensor(LN3 / 3.0))
    torch.testing.assert_close(stats["is/truncated_frac"], torch.tensor(1.0 / 3.0))
    torch.testing.assert_close(stats["is/masked_rows_frac"], torch.tensor(0.5))
    weights, out_mask, _ = importance_correction(trainer, sampler, mask, "tis", 2.0, 1.5)
    assert torch.equal(out_mask, mask) and weights is not None
    weights, out_mask, _ = importance_correction(trainer, sampler, mask, "mis", 2.0, 1.5)
    assert weights is None and out_mask[0].sum() == 0
    weights, out_mask, stats = importance_correction(trainer, sampler, mask, "off", 2.0, 1.5)
    assert weights is None and torch.equal(out_mask, mask) and float(stats["is/masked_rows_frac"]) == 0.5
    with pytest.raises(ValueError, match="tis_mis"):
        importance_correction(trainer, sampler, mask, "both", 2.0, 1.5)


def test_is_weights_scale_each_tokens_surrogate_but_not_the_kl():
    # on-policy ratio 1, A = 1: per-token surrogate -1; weights (2, 0.5); bnpo mean over 2 tokens -> -(2 + .5) / 2
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask = torch.ones(1, 2)
    kwargs = dict(beta=0.0, epsilon_low=0.2, epsilon_high=0.2, loss_type="bnpo", max_completion_length=2,
                  num_micro_batches=1, tokens_per_process=None)
    loss, _ = grpo_loss(logp, None, None, torch.tensor([1.0]), mask, is_weights=torch.tensor([[2.0, 0.5]]), **kwargs)
    torch.testing.assert_close(loss, torch.tensor(-1.25))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -0.25]]))  # d(-w * ratio)/d logp / 2
    # with a KL term (ref = logp, k3 = 0 but its gradient is not weighted): beta * d k3/d logp = 0 at ref = logp
    ref = torch.tensor([[-1.0, -2.0]])
    weighted, _ = grpo_loss(logp, None, ref, torch.tensor([0.0]), mask, **{**kwargs, "beta": 1.0},
                            is_weights=torch.tensor([[2.0, 0.5]]))
    plain, _ = grpo_loss(logp, None, ref, torch.tensor([0.0]), mask, **{**kwargs, "beta": 1.0})
    torch.testing.assert_close(weighted, plain)


@pytest.mark.parametrize("temperature", [1.5, 0.7])
def test_correction_brings_the_perturbed_samplers_gradient_to_the_on_policy_one(temperature):
    rows = run(length=3, vocab=4, sampler_temperature=temperature, cap=2.0, threshold=2.0, seed=0, reward="count")
    assert rows["on-policy"]["relative_error"] < 1e-12
    uncorrected = rows["uncorrected"]["relative_error"]
    assert uncorrected > 0.05, "the temperature mismatch biases the uncorrected gradient"
    for name in ("tis (cap 2)", "tis_mis (cap 2, threshold 2)", "tis (no cap)"):
        assert rows[name]["relative_error"] < uncorrected / 4, name
    assert rows["tis (no cap)"]["relative_error"] < 1e-9, "uncapped token IS is exact when tokens are independent"
