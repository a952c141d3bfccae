"""Skipping zero-advantage rows (beta 0, dapo, one process) gives the gradients of the full pass."""

from dataclasses import replace
from unittest import mock

import pytest
import torch
from lightning.fabric import Fabric
from transformers import AutoModelForCausalLM

from rcl.engines import Completion
from rcl.optim import OptimizerArgs, build_optimizer, build_scheduler
from rcl.rl import loop
from rcl.rl.args import GenerationArgs, GRPOArgs
from rcl.rl.rollout import Rollout


def make_rollout(advantages):
    g = torch.Generator().manual_seed(0)
    completions = [Completion(torch.randint(5, 300, (3 + i,), generator=g).tolist(), None, "length", "")
                   for i in range(len(advantages))]
    prompts = [torch.randint(5, 300, (6,), generator=g).tolist() for _ in advantages]
    n = len(advantages)
    return Rollout(prompts, completions, [], torch.zeros(n), {}, torch.tensor(advantages), torch.zeros(n // 2),
                   {}, {}, 2)


def step(model_dir, rollout, skip: bool, **grpo_kwargs):
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", devices=1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = OptimizerArgs(learning_rate=1e-2)
    optimizer = build_optimizer(model.parameters(), args)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "scheduler": build_scheduler(optimizer, 10, args),
             "ref_model": None}
    grpo = GRPOArgs(micro_batch_size=2, loss_type="dapo", beta=0.0, **grpo_kwargs)
    everything = lambda rollout, grpo, world, off: list(range(len(rollout)))  # noqa: E731
    grads = {}

    def record_gradients(*a, **k):
        grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    optimizer.step = record_gradients
    with mock.patch.object(loop, "trained_rows", loop.trained_rows if skip else everything):
        loop.train_step(fabric, state, rollout, grpo, GenerationArgs(), args, [0], None)
    return grads


@pytest.mark.parametrize("advantages", [[1.0, 0.0, -1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
def test_skipping_zero_advantage_rows_changes_nothing(tiny_model_dir, advantages):
    rollout = make_rollout(advantages)
    skipped, full = step(tiny_model_dir, rollout, True), step(tiny_model_dir, rollout, False)
    for name in full:
        torch.testing.assert_close(skipped[name], full[name], atol=1e-7, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in full.values()) == any(a != 0 for a in advantages)


def test_rows_are_kept_whenever_skipping_could_change_the_update():
    rollout = make_rollout([1.0, 0.0, 0.0, -1.0])
    assert loop.trained_rows(rollout, GRPOArgs(loss_type="dapo"), 1, False) == [0, 3]
    assert loop.trained_rows(rollout, GRPOArgs(loss_type="dapo", beta=0.1), 1, False) == [0, 1, 2, 3]
    assert loop.trained_rows(rollout, GRPOArgs(loss_type="grpo"), 1, False) == [0, 1, 2, 3]
    assert loop.trained_rows(rollout, GRPOArgs(loss_type="dapo"), 2, False) == [0, 1, 2, 3]
    assert loop.trained_rows(rollout, GRPOArgs(loss_type="dapo"), 1, True) == [0, 1, 2, 3]


def test_truncated_completions_are_masked_by_their_finish_reason(tiny_model_dir):
    rollout = make_rollout([1.0, -1.0, 0.5, -0.5])  # every completion finished by "length"
    masked = step(tiny_model_dir, rollout, True, mask_truncated_completions=True)
    assert all(g.abs().sum() == 0 for g in masked.values())
    rollout.completions = [replace(c, finish_reason="stop") for c in rollout.completions]
    kept = step(tiny_model_dir, rollout, True, mask_truncated_completions=True)
    assert any(g.abs().sum() > 0 for g in kept.values())


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_accumulates_every_micro_batch_when_the_boundary_is_marked(stage, repo_env):
    """Fabric runs one DeepSpeed backward per micro-batch with gradient_accumulation_steps 1. Measured here: ZeRO-2
    then keeps only the last micro-batch's gradient (ZeRO-3 accumulates); marking the boundary, as train_step does
    under DeepSpeed, gives the whole batch's gradient under both."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    from serving_support import free_port

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    script = Path(__file__).with_name("deepspeed_accumulation.py")
    proc = subprocess.run([sys.executable, str(script), str(stage), str(free_port())], capture_output=True, text=True,
                          timeout=300, env=repo_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["marked"] < 1e-6, result
    print(result)


def test_train_step_marks_the_deepspeed_boundary_on_the_last_micro_batch_only(tiny_model_dir):
    from types import SimpleNamespace

    from lightning.fabric.strategies import DeepSpeedStrategy
    from transformers import AutoModelForCausalLM

    from rcl.engines import Completion
    from rcl.rl import loop
    from rcl.rl.args import GenerationArgs, GRPOArgs
    from rcl.rl.rollout import Rollout

    marks = []

    class Engine(torch.nn.Module):  # stands in for the DeepSpeedEngine inside Fabric's module wrapper
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

        def set_gradient_accumulation_boundary(self, is_boundary):
            marks.append(is_boundary)

    class Wrapper(torch.nn.Module):
        def __init__(self, engine):
            super().__init__()
            self._forward_module = engine

        @property
        def module(self):  # Fabric's wrapper exposes the user's module, the engine runs the forward
            return self._forward_module.module

        def forward(self, *args, **kwargs):
            return self._forward_module(*args, **kwargs)

    model = Wrapper(Engine(AutoModelForCausalLM.from_pretrained(tiny_model_dir)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # isinstance only; nothing of it runs here
    fabric = SimpleNamespace(world_size=1, global_rank=0, device=torch.device("cpu"), strategy=strategy,
                             backward=lambda loss: loss.backward(), all_reduce=lambda t, reduce_op=None: t,
                             no_backward_sync=lambda *a, **k: __import__("contextlib").nullcontext(),
                             call=lambda *a, **k: None)
    completions = [Completion([7, 8, 9], None, "length", "x") for _ in range(6)]
    rollout = Rollout([[5, 6]] * 6, completions, [], torch.arange(6.0), {}, torch.tensor([1.0, -1, 1, -1, 1, -1]),
                      torch.zeros(3, dtype=torch.bool), {}, {}, 2)
    state = {"model": model, "optimizer": optimizer, "ref_model": None,
             "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)}
    loop.train_step(fabric, state, rollout, GRPOArgs(loss_type="dapo", beta=0.0, micro_batch_size=2),
                    GenerationArgs(max_completion_length=3), loop.DEFAULT_OPTIMIZER, [0], None)
    assert marks == [False, False, True]


def test_one_step_on_two_processes_equals_one_process_on_the_same_rows(models_dir, tmp_path, repo_env):
    """The loss normalisations hold across processes: DDP on two gloo processes, each with half of a fixed rollout,
    lands on the weights one process reaches on the whole rollout, for grpo, dr_grpo and dapo. (bnpo normalises each
    micro-batch by its own tokens, as TRL defines it, so it depends on how rows fall into micro-batches by design.)"""
    import subprocess
    import sys
    from pathlib import Path

    loss_types = ["grpo", "dr_grpo", "dapo"]
    script = Path(__file__).with_name("ddp_train_step.py")
    repo_env["RCL_MODELS_DIR"] = str(models_dir)
    weights = {}
    for devices in (1, 2):
        out = tmp_path / f"weights-{devices}.pt"
        proc = subprocess.run([sys.executable, str(script), str(devices), ",".join(loss_types), str(out)],
                              capture_output=True, text=True, timeout=300, env=repo_env, cwd=script.parents[1])
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[devices] = torch.load(out, weights_only=True)
    base = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-1m").state_dict()
    assert sorted(weights[1]) == sorted(weights[2]) == sorted(loss_types)
    for loss_type in loss_types:
        one, two = weights[1][loss_type], weights[2][loss_type]
        assert any(not torch.equal(base[k], one[k]) for k in base), f"{loss_type}: the step changed the weights"
        for name in one:
            torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5, msg=lambda m: f"{loss_type}: {m}")
    # the normalisations differ, so the three steps must too: a script that ignored the loss type would fail here
    assert not torch.equal(weights[1]["grpo"]["lm_head.weight"], weights[1]["dr_grpo"]["lm_head.weight"])
