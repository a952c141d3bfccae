"""The learning-rate schedule, against factors worked out by hand."""

import math

import pytest
import torch

from rcl.optim import OptimizerArgs, build_optimizer, build_scheduler, lr_factor


def test_warmup_then_cosine_to_the_floor():
    # 11 steps, warm-up int(0.1 * 11) = 1 step: step 0 -> 1/2; then progress (s - 1) / 10 of a cosine from 1 to 0.1
    args = OptimizerArgs(warmup_ratio=0.1, schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, 11, args) for s in (0, 1, 3, 6, 11, 20)]
    cos_at_02 = 0.1 + 0.9 * 0.5 * (1 + math.cos(0.2 * math.pi))  # 0.91405765...
    assert factors == pytest.approx([0.5, 1.0, cos_at_02, 0.55, 0.1, 0.1])


def test_linear_and_constant_shapes():
    linear = OptimizerArgs(warmup_ratio=0.0, schedule="linear", min_lr_ratio=0.1)
    assert [lr_factor(s, 10, linear) for s in (0, 2, 5, 10)] == pytest.approx([1.0, 0.82, 0.55, 0.1])
    constant = OptimizerArgs(warmup_ratio=0.3, schedule="constant")
    # warm-up int(0.3 * 10) = 3 steps: 1/4, 2/4, 3/4, then 1
    assert [lr_factor(s, 10, constant) for s in (0, 1, 2, 3, 9)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_scheduler_drives_the_optimizer_learning_rate():
    args = OptimizerArgs(learning_rate=2e-3, warmup_ratio=0.25, schedule="cosine", min_lr_ratio=0.0)
    layer = torch.nn.Linear(2, 1)
    optimizer = build_optimizer(layer.parameters(), args)
    scheduler = build_scheduler(optimizer, 4, args)
    seen = []
    for _ in range(4):  # warm-up 1 step (1/2), then cosine over 3 steps: 1, 0.75, 0.25
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1e-3, 2e-3, 1.5e-3, 0.5e-3])


def test_cpu_parameters_take_the_fused_adamw_with_the_same_update():
    torch.manual_seed(0)
    frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)
    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3)), frozen]
    reference = [torch.nn.Parameter(w.detach().clone()) for w in weights[:2]]
    args = OptimizerArgs(learning_rate=1e-2, weight_decay=0.1)
    fused = build_optimizer(weights, args)
    assert fused.defaults["fused"] is True
    assert [p for group in fused.param_groups for p in group["params"]] == weights[:2]  # the frozen one is left out
    loop = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(3):
        for params in (weights[:2], reference):
            for p in params:
                p.grad = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) / 7 - p.detach()
        fused.step()
        loop.step()
    for got, want in zip(weights[:2], reference):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_parameters_of_other_kinds_keep_torchs_default():
    class Flat(torch.nn.Parameter):  # stands for FSDP's flat parameters and DTensor-backed ones
        pass

    args = OptimizerArgs()
    assert build_optimizer([Flat(torch.randn(2))], args).defaults["fused"] is None
    assert build_optimizer([torch.nn.Parameter(torch.randn(2, dtype=torch.float64))], args).defaults["fused"] is True
