"""Greedy held-out episodes of policies in a multi-turn environment, and paired differences between them.

    python experiments/env_eval.py --models runs/quickstart_grid_sft/hf_model runs/quickstart_grid/hf_model \
        --episodes 300

The environment, the prompt templates and the tokens per turn are the RL recipe's (`--config`). Every model plays the same `--episodes` episodes of the environment's own `test` rows (seeds disjoint from the
`train` rows that SFT data from the environment uses) through the multi-turn rollout (rcl.rl.multiturn), with the
recipe's generation settings at temperature 0. Prints each model's mean return and success with percentile-bootstrap
intervals over episodes, and for every model after the first the paired difference against the first
(rcl.eval.stats.paired_delta: episodes resampled in pairs). `--json` writes the per-episode values.
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
from rcl.tiny_models import resolve_model



def play(path: str, task: TaskArgs, rows: list[dict], templates: PromptTemplates, max_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(path)
    tokenizer = AutoTokenizer.from_pretrained(resolved, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(resolved, torch_dtype=torch.float32).eval()
    settings = rollout_settings(GRPOArgs(protocol="direct", num_generations=1),
                                GenerationArgs(max_completion_length=max_tokens, temperature=0.0))
    settings = replace(settings, policy=replace(settings.policy, temperature=0.0))
    runner = MultiTurnRunner(HFEngine(model, tokenizer), copy_factory(task.build()), templates, "sum")
    with torch.no_grad():
        rollout = runner.run(rows, seed=0, settings=settings)
    runner.close()
    return {"return": [float(r) for r in rollout.rewards], "success": [i.p_with for i in rollout.interactions]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="HF folders or tiny presets; the first is the base")
    parser.add_argument("--config", default="lightning_configs/quickstart_grid.yaml",
                        help="the RL recipe: its task, templates and generation.max_completion_length")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--json", default=None, help="write the per-episode values here")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        recipe = yaml.safe_load(f)
    task = TaskArgs(**recipe["task"])
    templates = PromptTemplates(**recipe["templates"])
    max_tokens = recipe["generation"]["max_completion_length"]
    rows = task.build().rows("test", args.episodes)
    results = {path: play(path, task, rows, templates, max_tokens) for path in args.models}
    base = args.models[0]
    for path, values in results.items():
        line = [path]
        for key in ("return", "success"):
            low, high = bootstrap_mean_interval(values[key])
            line.append(f"{key} {np.mean(values[key]):.3f} [{low:.3f}, {high:.3f}]")
            if path != base:
                d = paired_delta(values[key], results[base][key])
                line.append(f"paired {key} {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        print("  ".join(line))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    return results


if __name__ == "__main__":
    main()
