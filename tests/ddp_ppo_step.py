"""Run by tests/test_ppo.py: one PPO update (value head, GAE, whitening, clipped losses, entropy) on a fixed multi-turn
rollout, on 1 or 2 gloo processes.

Each process trains on its contiguous share of the same 8 episodes (as the loop splits prompts); the shares hold
different numbers of trained tokens, so the update only matches one process's if whitening and every token mean span
the whole batch. Writes the updated policy and value-head weights (rank 0) to OUT.
Usage: python ddp_ppo_step.py DEVICES OUT
"""

import sys

import torch
from lightning.fabric import Fabric
from transformers import AutoModelForCausalLM

from rcl.engines import Completion
from rcl.optim import OptimizerArgs, build_scheduler
from rcl.rl import loop, ppo
from rcl.rl.args import GenerationArgs, GRPOArgs
from rcl.rl.rollout import Rollout
from rcl.tiny_models import resolve_model

devices, out = int(sys.argv[1]), sys.argv[2]
fabric = Fabric(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto")
fabric.launch()

g = torch.Generator().manual_seed(0)
rows = 8
completions, masks, turn_rewards = [], [], []
for i in range(rows):  # 1-3 turns of 1-2 action tokens, 2 environment tokens between turns
    ids, mask, steps = [], [], []
    turns = 1 + i % 3
    for t in range(turns):
        action = torch.randint(5, 300, (1 + (i + t) % 2,), generator=g).tolist()
        ids, mask = ids + action, mask + [1] * len(action)
        steps.append((len(ids) - 1, 1.0 if t == turns - 1 and i % 2 else 0.1 * ((i + t) % 3)))
        if t < turns - 1:
            ids, mask = ids + torch.randint(5, 300, (2,), generator=g).tolist(), mask + [0, 0]
    completions.append(Completion(ids, [0.0] * len(ids), "stop", ""))
    masks.append(mask)
    turn_rewards.append(steps)
prompts = [torch.randint(5, 300, (6,), generator=g).tolist() for _ in range(rows)]
returns = torch.tensor([sum(r for _, r in steps) for steps in turn_rewards])
share = rows // fabric.world_size
mine = slice(fabric.global_rank * share, (fabric.global_rank + 1) * share)
rollout = Rollout(prompts[mine], completions[mine], [], returns[mine], {}, torch.zeros(share),
                  torch.zeros(share, dtype=torch.bool), {}, {}, 1, action_masks=masks[mine],
                  turn_rewards=turn_rewards[mine])

torch.manual_seed(0)
path = resolve_model("tiny-1m")
model = AutoModelForCausalLM.from_pretrained(path)
args = OptimizerArgs(learning_rate=1.0, schedule="constant", max_grad_norm=0.0)
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the weights move by exactly the gradient
model, optimizer = fabric.setup(model, optimizer)
ppo_args = ppo.PPOArgs(ppo_epochs=1, mini_batch_size=rows, entropy_coef=0.1)  # one update over the whole rollout
critic = ppo.build_critic(ppo_args, loop.unwrap(model), path, seed=0)
critic_optimizer = torch.optim.SGD(critic.parameters(), lr=1.0)
critic, critic_optimizer = fabric.setup(critic, critic_optimizer)
state = {"model": model, "optimizer": optimizer, "scheduler": build_scheduler(optimizer, 10, args), "ref_model": None,
         "critic": critic, "critic_optimizer": critic_optimizer, "critic_scheduler": None, "kl_controller": None}
stats = ppo.train_step(fabric, state, rollout, ppo_args, GenerationArgs(max_completion_length=2), args,
                       lambda index, comp: loop._mask(rollout, index, comp, [0], GRPOArgs()), step_seed=0)
assert stats["ppo/updates"] == 1.0, stats
if fabric.global_rank == 0:
    weights = {f"policy.{k}": v.detach().clone() for k, v in loop.unwrap(model).state_dict().items()}
    weights |= {f"critic.{k}": v.detach().clone() for k, v in loop.unwrap(critic).state_dict().items()}
    torch.save(weights, out)
fabric.barrier()
