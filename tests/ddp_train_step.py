"""Run by tests/test_rl_train_step.py: one RL optimizer step on a fixed rollout, on 1 or 2 gloo processes.

Each process trains on its contiguous share of the same 8 rows (as the loop splits prompts), so the step's result
must not depend on the process count. For each loss type, a fresh model takes one step; rank 0 writes
{loss type: updated weights} to OUT (one launch for every loss type, since starting the processes is most of the cost).
Usage: python ddp_train_step.py DEVICES LOSS_TYPE[,LOSS_TYPE...] OUT
"""

import sys

import torch
from lightning.fabric import Fabric
from transformers import AutoModelForCausalLM

from rcl.engines import Completion
from rcl.optim import OptimizerArgs, build_scheduler
from rcl.rl import loop
from rcl.rl.args import GenerationArgs, GRPOArgs
from rcl.rl.rollout import Rollout
from rcl.tiny_models import resolve_model

devices, loss_types, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
fabric = Fabric(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto")
fabric.launch()

g = torch.Generator().manual_seed(0)
rows = 8
completions = [Completion(torch.randint(5, 300, (2 + i % 4,), generator=g).tolist(), None, "length", "")
               for i in range(rows)]
prompts = [torch.randint(5, 300, (6,), generator=g).tolist() for _ in range(rows)]
advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.25, -0.25])
share = rows // fabric.world_size
mine = slice(fabric.global_rank * share, (fabric.global_rank + 1) * share)
rollout = Rollout(prompts[mine], completions[mine], [], torch.zeros(share), {}, advantages[mine],
                  torch.zeros(share // 2), {}, {}, 2)

args = OptimizerArgs(learning_rate=1.0, schedule="constant", max_grad_norm=0.0)
weights = {}
for loss_type in loss_types:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-1m"))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the weights move by exactly the gradient (AdamW's first
    # step is about lr * sign(g), which amplifies float noise in near-zero gradients)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "scheduler": build_scheduler(optimizer, 10, args),
             "ref_model": None}
    grpo = GRPOArgs(micro_batch_size=3, loss_type=loss_type, beta=0.0)  # micro-batches of unequal size on purpose
    loop.train_step(fabric, state, rollout, grpo, GenerationArgs(max_completion_length=8), args, [0], None)
    weights[loss_type] = {k: v.detach().clone() for k, v in loop.unwrap(model).state_dict().items()}
if fabric.global_rank == 0:
    torch.save(weights, out)
fabric.barrier()
