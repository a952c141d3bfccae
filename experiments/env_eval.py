"""Held-out episodes of policies in a multi-turn environment, greedy or sampled, and paired differences between them.

    python experiments/env_eval.py --models runs/quickstart_grid_sft/hf_model runs/quickstart_grid/hf_model \
        --episodes 300

The environment, the prompt templates and the tokens per turn are the RL recipe's (`--config`). Every model plays the
same `--episodes` episodes of the environment's own `test` rows (seeds disjoint from the `train` rows that SFT data
from the environment uses) through the multi-turn rollout (rcl.rl.multiturn), greedily by default; with `--temperature
T --samples K` each episode is sampled K times (the same seed for every model) and its value is the mean of the K, so
the pairing stays by episode. `--scripted EPS ...` adds the environment's scripted expert with a share EPS of
uniformly random actions (0: the optimal policy, 1: uniformly random) on the same episodes, and `--pool LABEL 1,2,3` a
row of those models' per-episode mean (RL seeds pooled). Prints each model's mean return and success with
percentile-bootstrap intervals over episodes (`--level`, 95% by default), and for every model after the first the
paired difference against the first (rcl.eval.stats.paired_delta: episodes resampled in pairs). `--json` writes the
per-episode values.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import yaml

from rcl.engines import HFEngine
from rcl.eval.stats import bootstrap_mean_interval, paired_delta
from rcl.prompts import PromptTemplates
from rcl.rl.args import GenerationArgs, GRPOArgs
from rcl.rl.loop import rollout_settings
from rcl.rl.multiturn import MultiTurnRunner, copy_factory
from rcl.tasks.base import TaskArgs
from rcl.tasks.envs.base import run_episode, scripted_policy
from rcl.tiny_models import resolve_model



def play(path: str, task: TaskArgs, rows: list[dict], templates: PromptTemplates, max_tokens: int,
         temperature: float = 0.0, samples: int = 1) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(path)
    tokenizer = AutoTokenizer.from_pretrained(resolved, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(resolved, torch_dtype=torch.float32).eval()
    settings = rollout_settings(GRPOArgs(protocol="direct", num_generations=1),
                                GenerationArgs(max_completion_length=max_tokens, temperature=temperature))
    settings = replace(settings, policy=replace(settings.policy, temperature=temperature))
    runner = MultiTurnRunner(HFEngine(model, tokenizer), copy_factory(task.build()), templates, "sum")
    with torch.no_grad():
        rollout = runner.run([row for row in rows for _ in range(samples)], seed=0, settings=settings)
    runner.close()
    returns = np.asarray(rollout.rewards, dtype=float).reshape(len(rows), samples)
    success = np.asarray([i.p_with for i in rollout.interactions], dtype=float).reshape(len(rows), samples)
    return {"return": returns.mean(1).tolist(), "success": success.mean(1).tolist()}


def play_scripted(epsilon: float, task: TaskArgs, rows: list[dict], samples: int = 1) -> dict:
    env = task.build()
    episodes = [[run_episode(env, scripted_policy(epsilon, seed=row["seed"] * 1_000 + k), row) for k in range(samples)]
                for row in rows]
    return {"return": [float(np.mean([e.total for e in eps])) for eps in episodes],
            "success": [float(np.mean([e.success for e in eps])) for eps in episodes]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="HF folders or tiny presets; the first is the base")
    parser.add_argument("--config", default="lightning_configs/quickstart_grid.yaml",
                        help="the RL recipe: its task, templates and generation.max_completion_length")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--samples", type=int, default=1, help="plays of each episode (with --temperature > 0)")
    parser.add_argument("--scripted", type=float, nargs="*", default=[],
                        help="also the scripted expert with these shares of random actions (0 optimal, 1 random)")
    parser.add_argument("--pool", nargs=2, action="append", default=[], metavar=("LABEL", "INDICES"),
                        type=str, help="also a pooled row: the mean over these models (indices into --models, "
                                         "comma-separated, e.g. RL seeds) per episode")
    parser.add_argument("--level", type=float, default=0.95, help="interval coverage")
    parser.add_argument("--json", default=None, help="write the per-episode values here")
    args = parser.parse_args(argv)
    try:
        args.pool = [(label, [int(i) for i in indices.split(",")]) for label, indices in args.pool]
    except ValueError:
        parser.error("--pool LABEL INDICES: INDICES are comma-separated positions in --models, e.g. 1,2,3")
    if any(not 0 <= i < len(args.models) for _, members in args.pool for i in members):
        parser.error("--pool indices must be positions in --models")
    if args.samples < 1 or (args.samples > 1 and args.temperature == 0):
        parser.error("--samples > 1 needs --temperature > 0 (greedy plays repeat exactly)")
    with open(args.config) as f:
        recipe = yaml.safe_load(f)
    task = TaskArgs(**recipe["task"])
    templates = PromptTemplates(**recipe["templates"])
    max_tokens = recipe["generation"]["max_completion_length"]
    rows = task.build().rows("test", args.episodes)
    results = {path: play(path, task, rows, templates, max_tokens, args.temperature, args.samples)
               for path in args.models}
    for epsilon in args.scripted:
        results[f"scripted expert, epsilon {epsilon}"] = play_scripted(epsilon, task, rows, args.samples)
    for label, members in args.pool:
        # each episode's mean over the pooled runs (e.g. RL seeds), paired with the base on the same episode
        results[label] = {key: np.mean([results[args.models[i]][key] for i in members], axis=0).tolist()
                          for key in ("return", "success")}
    base = args.models[0]
    print(f"{len(rows)} test episodes; {args.level:.0%} percentile-bootstrap intervals, paired ones against {base}")
    for path, values in results.items():
        line = [path]
        for key in ("return", "success"):
            low, high = bootstrap_mean_interval(values[key], args.level)
            line.append(f"{key} {np.mean(values[key]):.3f} [{low:.3f}, {high:.3f}]")
            if path != base:
                d = paired_delta(values[key], results[base][key], args.level)
                line.append(f"paired {key} {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        print("  ".join(line))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    return results


if __name__ == "__main__":
    main()
