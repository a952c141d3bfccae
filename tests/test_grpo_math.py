import math

import pytest
import torch

from rcl.grpo import (
    aggregate_loss,
    clipped_surrogate,
    completion_logprobs,
    completion_mask,
    group_advantages,
    grpo_loss,
    kl_k3,
    mask_truncated,
    masked_mean,
    selective_log_softmax,
    token_logprobs,
    truncated_rows,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


# ---------------------------------------------------------------- advantages


def test_group_advantages_group_scale_and_zero_std():
    # group 1 [1, 0]: mean .5, unbiased std sqrt(.5) = .70710678 -> A = +-.5 / (.70710678 + 1e-4) = +-.70700680
    # group 2 [.5, .5]: std 0 -> A = 0, flagged zero-std
    adv, zero_std = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), group_size=2)
    torch.testing.assert_close(adv, torch.tensor([0.70700680, -0.70700680, 0.0, 0.0]))
    assert zero_std.tolist() == [False, True]


def test_group_advantages_group_of_three():
    # [3, 0, 0]: mean 1, unbiased var (4 + 1 + 1) / 2 = 3 -> A = (2, -1, -1) / (sqrt 3 + 1e-4)
    adv, zero_std = group_advantages(torch.tensor([3.0, 0.0, 0.0, 1.0, 1.0, 1.0]), group_size=3)
    torch.testing.assert_close(adv, torch.tensor([1.15463388, -0.57731694, -0.57731694, 0.0, 0.0, 0.0]))
    assert zero_std.tolist() == [False, True]


def test_group_advantages_batch_and_none_scale():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    # batch std: mean .5, squared deviations .25 + .25 + 0 + 0 = .5, unbiased var .5/3 -> std .40824829;
    # centring is still per group: +-.5 / (.40824829 + 1e-4) = +-1.22444494
    adv, _ = group_advantages(rewards, 2, scale="batch")
    torch.testing.assert_close(adv, torch.tensor([1.22444494, -1.22444494, 0.0, 0.0]))
    adv, zero_std = group_advantages(rewards, 2, scale="none")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert zero_std.tolist() == [False, True]


@pytest.mark.parametrize(("n", "g", "message"), [(4, 1, "group_size must be >= 2"), (5, 2, "groups of 2")])
def test_group_advantages_rejects_bad_groups(n, g, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(torch.zeros(n), g)


# ---------------------------------------------------------------- masks

IDS = torch.tensor(
    [
        [5, 7, 2, 9, 9],  # stop 2 at index 2
        [5, 3, 7, 0, 0],  # the *second* stop id (3) at index 1: the original (eos only) would keep the padding
        [4, 4, 4, 4, 4],  # no stop: truncated
        [2, 1, 1, 1, 1],  # stop at index 0
    ]
)


def test_completion_mask_stops_after_first_of_any_stop_id():
    mask = completion_mask(IDS, stop_ids=[2, 3])
    expected = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert mask.dtype == torch.float32
    assert mask.tolist() == expected


def test_completion_mask_with_lengths():
    # row 2 has length 3, row 1 length 1 (its stop at index 1 lies outside it)
    mask = completion_mask(IDS, stop_ids=[2, 3], lengths=torch.tensor([5, 1, 3, 5]))
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]


def test_completion_mask_trailing_padding():
    ids = torch.tensor([[6, 6, 0, 0, 0], [6, 0, 6, 6, 6]])
    # pad 0 is not a stop: trailing pads are dropped, an inner pad is kept
    assert completion_mask(ids, stop_ids=[2], pad_id=0).tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    # pad 0 is also the stop token: the first one is kept as the stop
    assert completion_mask(ids, stop_ids=[0], pad_id=0).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]


def test_truncated_rows_and_masking_them():
    assert truncated_rows(IDS, [2, 3]).tolist() == [False, False, True, False]
    assert truncated_rows(IDS, [2, 3], lengths=torch.tensor([5, 1, 5, 5])).tolist() == [False, True, True, False]
    masked = mask_truncated(completion_mask(IDS, [2, 3]), truncated_rows(IDS, [2, 3]))
    assert masked.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]


def test_completion_mask_needs_stop_ids():
    with pytest.raises(ValueError, match="stop_ids is empty"):
        completion_mask(IDS, [])


# ---------------------------------------------------------------- log-probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_hand_values(dtype):
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([ln 2, ln 2]) = [1/2, 1/2]
    logits = torch.tensor([[[0.0, LN3], [LN2, LN2]]], dtype=dtype)
    out = selective_log_softmax(logits, torch.tensor([[1, 0]]))
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), torch.tensor([[math.log(0.75), math.log(0.5)]]), atol=tol, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2 * 5 * 11, 1 << 22])  # one row per call, two rows (3 = 2 + 1), all rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_matches_log_softmax(dtype, chunk, monkeypatch):
    monkeypatch.setattr("rcl.grpo.LOGSUMEXP_CHUNK", chunk)
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 11) * 4).to(dtype)
    index = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits.float(), -1).gather(-1, index[..., None]).squeeze(-1)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(selective_log_softmax(logits, index).float(), expected, atol=tol, rtol=0)


def test_token_logprobs_divides_by_temperature():
    # logits [0, 2 ln 3] at T = 2 become [0, ln 3] -> p(token 1) = 3/4; at T = 1: 9/10
    logits = torch.tensor([[[0.0, 2 * LN3]]])
    torch.testing.assert_close(token_logprobs(logits, torch.tensor([[1]]), 2.0), torch.tensor([[math.log(0.75)]]))
    torch.testing.assert_close(token_logprobs(logits, torch.tensor([[1]])), torch.tensor([[math.log(0.9)]]))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, torch.tensor([[1]]), 0.0)


@pytest.fixture(scope="module")
def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return Qwen2ForCausalLM(config).eval()


def test_completion_logprobs_matches_full_logits_and_is_padding_invariant(tiny_qwen2):
    pad = 0
    # prompts left-padded to P = 4, completions right-padded to T = 3
    input_ids = torch.tensor([[pad, pad, 11, 12, 21, 22, pad], [13, 14, 15, 16, 23, 24, 25]])
    attention_mask = (input_ids != pad).long()
    temperature, completion_len = 0.7, 3
    got = completion_logprobs(tiny_qwen2, input_ids, attention_mask, completion_len, temperature)
    assert got.shape == (2, 3)

    with torch.no_grad():
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        full = tiny_qwen2(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    # logits at position t predict token t + 1: completion tokens 4..6 are predicted by positions 3..5
    naive = torch.log_softmax(full[:, 3:6] / temperature, -1).gather(-1, input_ids[:, 4:7, None]).squeeze(-1)
    torch.testing.assert_close(got.detach(), naive, atol=1e-5, rtol=0)

    # the left-padded row scores its real tokens exactly as if it had no padding
    alone = torch.tensor([[11, 12, 21, 22]])
    alone_logps = completion_logprobs(tiny_qwen2, alone, torch.ones_like(alone), 2, temperature)
    torch.testing.assert_close(got[0, :2].detach(), alone_logps[0].detach(), atol=1e-5, rtol=0)


def test_completion_logprobs_needs_a_prompt(tiny_qwen2):
    ids = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="completion_len"):
        completion_logprobs(tiny_qwen2, ids, torch.ones_like(ids), 2)


# ---------------------------------------------------------------- KL and surrogate


def test_kl_k3_hand_values_and_properties():
    # d = ref - logp: token 1 d = -ln 2: .5 + ln 2 - 1 = .19314718; token 2 d = ln 2: 2 - ln 2 - 1 = .30685282
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([[0.19314718, 0.30685282]]))
    torch.testing.assert_close(kl_k3(logp, logp), torch.zeros(1, 2))
    torch.manual_seed(0)
    a, b = torch.randn(100) * 3, torch.randn(100) * 3
    assert (kl_k3(a, b) >= 0).all()


def _surrogate_inputs():
    # row 0 A = +2 with ratios [1.5, .5]; row 1 A = -1 with ratios [.5, 1.5]
    ratios = torch.tensor([[1.5, 0.5], [0.5, 1.5]])
    logp = torch.log(ratios).requires_grad_(True)
    return logp, torch.zeros(2, 2), torch.tensor([2.0, -1.0])


def test_clipped_surrogate_values_and_clip_indicators():
    logp, old, adv = _surrogate_inputs()
    loss, stats = clipped_surrogate(logp, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    # (0,0): min(1.5*2, 1.28*2) = 2.56 -> -2.56, high-clipped   (0,1): min(.5*2, .8*2) = 1.0 -> -1.0
    # (1,0): min(-.5, -.8) = -.8 -> .8, low-clipped             (1,1): min(-1.5, -1.28) = -1.5 -> 1.5
    torch.testing.assert_close(loss, torch.tensor([[-2.56, -1.0], [0.8, 1.5]]))
    assert stats["high"].tolist() == [[True, False], [False, False]]
    assert stats["low"].tolist() == [[False, False], [True, False]]
    assert stats["region"].tolist() == [[True, False], [True, False]]


def test_clipped_tokens_have_zero_gradient():
    logp, old, adv = _surrogate_inputs()
    loss, _ = clipped_surrogate(logp, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    loss.sum().backward()
    # unclipped tokens: d(-rho A)/d logp = -rho A -> (0,1): -.5*2 = -1.0, (1,1): -1.5*-1 = 1.5
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.0], [0.0, 1.5]]))


# ---------------------------------------------------------------- aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # 2 + 4 = 6 active tokens, masked sum 3 + 26 = 29


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("grpo", 2.0),  # sequence means 3/2 = 1.5 and 26/4 = 6.5 -> mean 4.0, / 2 micro-batches
        ("bnpo", 29 / 12),  # 29 / 6 tokens / 2 micro-batches
        ("dr_grpo", 1.45),  # 29 / (B=2 * L_max=5) = 2.9, / 2 micro-batches
        ("dapo", 2.9),  # 29 / tokens_per_process 10, no micro-batch division
    ],
)
def test_aggregate_loss_normalisations(loss_type, expected):
    got = aggregate_loss(
        LOSS, MASK, loss_type, max_completion_length=5, num_micro_batches=2, tokens_per_process=10.0
    )
    torch.testing.assert_close(got, torch.tensor(expected))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_aggregate_loss_empty_mask_is_zero_not_nan(loss_type):
    loss = LOSS.clone().requires_grad_(True)
    got = aggregate_loss(
        loss, torch.zeros_like(MASK), loss_type, max_completion_length=4, num_micro_batches=1, tokens_per_process=0.0
    )
    assert got.item() == 0.0
    got.backward()
    assert torch.equal(loss.grad, torch.zeros_like(LOSS))


def test_aggregate_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tokens_per_process"):
        aggregate_loss(LOSS, MASK, "dapo", max_completion_length=4, num_micro_batches=1, tokens_per_process=None)
    with pytest.raises(ValueError, match="unknown loss_type"):
        aggregate_loss(LOSS, MASK, "ppo", max_completion_length=4, num_micro_batches=1, tokens_per_process=1.0)


def test_masked_mean():
    torch.testing.assert_close(masked_mean(LOSS, MASK), torch.tensor(29 / 6))
    assert masked_mean(LOSS, torch.zeros_like(MASK)).item() == 0.0


# ---------------------------------------------------------------- full loss

LOGP = torch.tensor([[math.log(0.5), math.log(0.25)]])
REF = torch.tensor([[math.log(0.25), math.log(0.5)]])


def _loss(ref, beta):
    return grpo_loss(
        LOGP, None, ref, torch.tensor([1.0]), torch.ones(1, 2),
        beta=beta, epsilon_low=0.2, epsilon_high=0.2, loss_type="bnpo",
        max_completion_length=2, num_micro_batches=1, tokens_per_process=None,
    )  # fmt: skip


def test_grpo_loss_adds_beta_k3():
    # on-policy: rho = 1, A = 1 -> surrogate -1 per token; k3 = [.19314718, .30685282], mean .25 (sum is exactly .5)
    loss, stats = _loss(REF, beta=0.1)
    torch.testing.assert_close(loss, torch.tensor(-1.0 + 0.1 * 0.25))
    torch.testing.assert_close(stats["kl"], torch.tensor(0.25))
    assert stats["clip_ratio/region_mean"].item() == 0.0
    loss, stats = _loss(REF, beta=0.0)
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    torch.testing.assert_close(stats["kl"], torch.tensor(0.25))
    loss, stats = _loss(None, beta=0.1)
    torch.testing.assert_close(loss, torch.tensor(-1.0))
    assert "kl" not in stats


def test_grpo_loss_clip_stats_are_masked_means():
    logp, old, adv = _surrogate_inputs()
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the low-clipped token (1,0) active, (1,1) masked
    _, stats = grpo_loss(
        logp, old, None, adv, mask, beta=0.0, epsilon_low=0.2, epsilon_high=0.28, loss_type="dapo",
        max_completion_length=2, num_micro_batches=1, tokens_per_process=3.0,
    )  # fmt: skip
    torch.testing.assert_close(stats["clip_ratio/high_mean"], torch.tensor(1 / 3))
    torch.testing.assert_close(stats["clip_ratio/low_mean"], torch.tensor(1 / 3))
    torch.testing.assert_close(stats["clip_ratio/region_mean"], torch.tensor(2 / 3))
    assert not any(value.requires_grad for value in stats.values())


# ---------------------------------------------------------------- gradient accumulation


def _accumulated_grad(loss_type, mask, splits, tokens_per_process, rows_per_process=None):
    torch.manual_seed(0)
    logp = (torch.randn(4, 6) * 0.3 - 1.0).requires_grad_(True)
    old = logp.detach() + torch.randn(4, 6) * 0.2
    ref = logp.detach() + torch.randn(4, 6) * 0.2
    adv = torch.tensor([1.0, -0.5, 0.3, -0.8])
    total = torch.zeros(())
    for rows in splits:
        loss, _ = grpo_loss(
            logp[rows], old[rows], ref[rows], adv[rows], mask[rows], beta=0.05, epsilon_low=0.2, epsilon_high=0.28,
            loss_type=loss_type, max_completion_length=6, num_micro_batches=len(splits),
            tokens_per_process=tokens_per_process, rows_per_process=rows_per_process,
        )  # fmt: skip
        loss.backward()
        total = total + loss.detach()
    return total, logp.grad


ONE_BATCH = [slice(0, 4)]
TWO_MICRO_BATCHES = [slice(0, 2), slice(2, 4)]
# rows 0+1 and rows 2+3 have 7 active tokens each
EQUAL_TOKENS = torch.tensor([[1] * 6, [1, 0, 0, 0, 0, 0], [1] * 4 + [0, 0], [1] * 3 + [0] * 3]).float()
UNEQUAL_TOKENS = torch.tensor([[1] * 6, [1] * 6, [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]).float()


@pytest.mark.parametrize(
    ("loss_type", "mask"),
    [("grpo", UNEQUAL_TOKENS), ("bnpo", EQUAL_TOKENS), ("dr_grpo", UNEQUAL_TOKENS), ("dapo", UNEQUAL_TOKENS)],
)
def test_two_micro_batches_equal_one_batch(loss_type, mask):
    tokens = mask.sum().item()
    full_loss, full_grad = _accumulated_grad(loss_type, mask, ONE_BATCH, tokens)
    split_loss, split_grad = _accumulated_grad(loss_type, mask, TWO_MICRO_BATCHES, tokens)
    torch.testing.assert_close(split_loss, full_loss)
    torch.testing.assert_close(split_grad, full_grad)
    assert full_grad.abs().sum() > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_of_unequal_sizes_equal_one_batch(loss_type):
    # 3 rows then 1: without the process's row count, grpo and dr_grpo would give the lone row three times the weight
    tokens = UNEQUAL_TOKENS.sum().item()
    full_loss, full_grad = _accumulated_grad(loss_type, UNEQUAL_TOKENS, ONE_BATCH, tokens, rows_per_process=4)
    split_loss, split_grad = _accumulated_grad(loss_type, UNEQUAL_TOKENS, [slice(0, 3), slice(3, 4)], tokens,
                                               rows_per_process=4)
    torch.testing.assert_close(split_loss, full_loss)
    torch.testing.assert_close(split_grad, full_grad)


def test_bnpo_is_not_accumulation_invariant_with_unequal_tokens():
    # why dapo exists: bnpo normalises each micro-batch by its own token count
    tokens = UNEQUAL_TOKENS.sum().item()
    _, full_grad = _accumulated_grad("bnpo", UNEQUAL_TOKENS, ONE_BATCH, tokens)
    _, split_grad = _accumulated_grad("bnpo", UNEQUAL_TOKENS, TWO_MICRO_BATCHES, tokens)
    assert not torch.allclose(split_grad, full_grad)


def test_batch_scaling_over_processes_divides_by_the_gathered_std():
    """TRL divides by the std of the whole gathered batch; each process used its own, so the advantages depended on
    how the batch was split over processes."""
    from types import SimpleNamespace

    from rcl.rl.loop import rescale_by_global_std
    from rcl.rl.rollout import Rollout

    rank0, rank1 = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([10.0, 0.0, 10.0, 0.0])
    fabric = SimpleNamespace(device=torch.device("cpu"), all_gather=lambda t: torch.stack([rank0, rank1]))
    rollout = Rollout([], [], [], rank0, {}, torch.zeros(4), torch.zeros(2, dtype=torch.bool), {}, {}, 2)
    rescale_by_global_std(fabric, rollout)
    std = torch.cat([rank0, rank1]).std()  # sqrt((201 - 8 * 2.625**2) / 7) = 4.565 over all 8 rewards
    expected = torch.tensor([0.5, -0.5, 0.0, 0.0]) / (std + 1e-4)
    torch.testing.assert_close(rollout.advantages, expected)
    assert abs(rollout.advantages[0].item() - 0.5 / 4.565) < 1e-3
    local, _ = group_advantages(rank0, 2, "batch")
    assert abs(local[0].item() - 1.0) < 1e-3, "a process's own std gives a different, process-count-dependent scale"
