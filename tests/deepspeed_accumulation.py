"""Run by tests/test_rl_train_step.py in a subprocess: raw DeepSpeed on gloo (Lightning's strategy refuses CPU).

Prints one JSON line: the largest difference between the gradient DeepSpeed holds after 4 micro-batch backward
passes (with `gradient_accumulation_steps: 1`, as Fabric configures it) and the gradient of the whole batch, without
and with the boundary marking rcl's train_step does. Usage: python deepspeed_accumulation.py STAGE PORT
"""

import json
import os
import sys

import torch

stage, port = int(sys.argv[1]), sys.argv[2]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                  DS_ACCELERATOR="cpu")
import deepspeed  # noqa: E402
from deepspeed.utils import safe_get_full_grad  # noqa: E402
from deepspeed_support import skip_the_shared_memory_comm_build  # noqa: E402

skip_the_shared_memory_comm_build()
deepspeed.init_distributed("gloo")


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


torch.manual_seed(1)
x, y = torch.randn(16, 8), torch.randn(16, 1)
whole = build()
(((whole(x) - y) ** 2).sum() / 16).backward()
expected = [p.grad for p in whole.parameters()]


def accumulated(mark_boundary: bool) -> float:
    model = build()
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage},
              "optimizer": {"type": "AdamW", "params": {"lr": 0.01, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    for k, (xs, ys) in enumerate(zip(x.chunk(4), y.chunk(4))):
        if mark_boundary:
            engine.set_gradient_accumulation_boundary(k == 3)
        engine.backward(((engine(xs) - ys) ** 2).sum() / 16)
    got = [safe_get_full_grad(p) for p in engine.module.parameters()]
    return max((a - b).abs().max().item() for a, b in zip(got, expected))


print(json.dumps({"stage": stage, "unmarked": accumulated(False), "marked": accumulated(True)}))
