"""Is a gap in rcl's loop? rcl's GRPO (`direct` protocol) against TRL's `GRPOTrainer`, from the same SFT'd student:

    python -m experiments.teaching_control        # quickstart_direct.yaml, seeds 0 1 2, 120 steps; control.json

Per seed, both frameworks train on the same prompts in the same order (rcl's own draw for that seed, handed to TRL
unshuffled), with the same reward (the recipe's, rcl's reward functions wrapped for TRL), and the recipe's G, prompts
per step, learning rate and schedule, AdamW settings, beta, clipping range, loss type, advantage scaling, temperature,
max completion length, gradient clipping and steps. Then the start model and every trained model are scored the same
way, greedily by rcl's rollout runner, on problems no SFT or RL run saw (the test split of `experiments.
teaching_study`). It prints one table from control.json: accuracy before and after per seed and framework, each change
with a paired 95% bootstrap interval, pooled over seeds, and rcl minus TRL on the same problems.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

FRAMEWORKS = ("rcl", "trl")
RECIPE = "lightning_configs/quickstart_direct.yaml"
LEVEL = 0.95


def recipe_kwargs(recipe: str, seed: int, steps: int, model: str, out_dir: Path, threads: int,
                  overrides: list[str]) -> dict[str, Any]:
    """`setup`'s arguments for one seed: the recipe with the start model, seed, length and run folder set."""
    from rcl.rl.loop import parse_recipe

    return parse_recipe("fit", [
        "--config", recipe, "--trainer.seed", str(seed), "--trainer.max_steps", str(steps),
        "--trainer.out_dir", str(out_dir), "--trainer.checkpoint_every_n_steps", "0", "--trainer.loggers", "[csv]",
        "--trainer.num_threads", str(threads), "--trainer.export_hf", "true",
        "--teacher.model_name_or_path", model, "--student.model_name_or_path", model, "--overwrite", "true",
        *overrides])


def check_comparable(kw: dict[str, Any]) -> None:
    """Refuse settings the TRL side would not reproduce."""
    grpo, opt = kw["grpo"], kw["optimizer"]
    problems = [msg for bad, msg in [
        (grpo.protocol != "direct", f"grpo.protocol is {grpo.protocol}; TRL has only the direct protocol"),
        (grpo.num_iterations != 1, "grpo.num_iterations must be 1"),
        (grpo.max_off_policy_steps != 0, "grpo.max_off_policy_steps must be 0 (synchronous)"),
        (grpo.sync_ref_model, "grpo.sync_ref_model must be false"),
        (grpo.micro_batch_size < grpo.prompts_per_step * grpo.num_generations, "one micro-batch per step"),
        (opt.schedule != "constant" or opt.warmup_ratio != 0, "a constant learning rate without warm-up"),
        (kw["trainer"].devices != 1 or kw["trainer"].num_nodes != 1, "one process"),
    ] if bad]
    if problems:
        raise SystemExit("teaching_control: " + "; ".join(problems))


def drawn_prompts(train_rows, per_step: int, seed: int, steps: int) -> list[list[dict]]:
    """The prompts rcl's loop draws at each step for this seed (its own `next_prompts`, one process)."""
    from rcl.rl.loop import next_prompts

    state = {"prompts_seen": 0}
    return [next_prompts(train_rows, state, per_step, seed, 0, per_step) for _ in range(steps)]


def trl_dataset(tokenizer, templates, task, steps_rows: list[list[dict]]):
    """Rows in training order, each prompt rendered exactly as rcl's direct protocol renders it."""
    import datasets

    from rcl.prompts import render_prompt, student_messages

    return datasets.Dataset.from_list([
        {"prompt": render_prompt(tokenizer, student_messages(templates, "baseline", task.prompt(row))),
         "question": row["question"], "ground_truth": row.get("ground_truth", "")}
        for rows in steps_rows for row in rows])


def trl_grpo_config(kw: dict[str, Any], out_dir: Path):
    """The recipe's settings as TRL's GRPOConfig (through the benchmark's shared config)."""
    from experiments.benchmarks.grpo_vs_trl import GRPOBenchConfig, trl_config

    grpo, gen, opt, trainer = kw["grpo"], kw["generation"], kw["optimizer"], kw["trainer"]
    bench = GRPOBenchConfig(num_generations=grpo.num_generations,
                            batch_size=grpo.prompts_per_step * grpo.num_generations,
                            max_completion_length=gen.max_completion_length, learning_rate=opt.learning_rate,
                            temperature=gen.temperature, steps=trainer.max_steps, seed=trainer.seed)
    return trl_config(
        bench, out_dir, beta=grpo.beta, loss_type=grpo.loss_type, epsilon=grpo.epsilon,
        epsilon_high=grpo.epsilon_high if grpo.epsilon_high is not None else grpo.epsilon,
        scale_rewards=grpo.scale_rewards, mask_truncated_completions=grpo.mask_truncated_completions,
        top_p=gen.top_p, top_k=gen.top_k, min_p=gen.min_p or None, repetition_penalty=gen.repetition_penalty,
        weight_decay=opt.weight_decay, adam_beta1=opt.betas[0], adam_beta2=opt.betas[1], adam_epsilon=opt.eps,
        max_grad_norm=opt.max_grad_norm, reward_weights=list(kw["reward"].functions.values()),
        shuffle_dataset=False)


def run_rcl(kw: dict[str, Any]) -> dict:
    """rcl's loop on the recipe; returns the questions and mean reward of every step."""
    from callbacks.base import FabricCallback
    from rcl.rl.loop import setup

    record: dict[str, list] = {"questions": [], "reward": []}

    class Recorder(FabricCallback):
        def on_train_batch_start(self, rows=None, **kwargs) -> None:
            record["questions"].append([r["question"] for r in rows])

        def on_train_batch_end(self, metrics=None, **kwargs) -> None:
            record["reward"].append(float(metrics["reward"]))

    setup(**{**kw, "callbacks": [*(kw.get("callbacks") or []), Recorder()]})
    return record


def run_trl(kw: dict[str, Any], model: str) -> dict:
    """TRL's GRPOTrainer on the same prompts, reward and settings; the trained model goes to <out_dir>/hf_model."""
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from experiments.benchmarks.grpo_vs_trl import reward_for_trl
    from rcl.rl.loop import build_task

    out_dir, task = Path(kw["trainer"].out_dir), build_task(kw["task"])
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    train_rows = kw["data"].rl_dataset("train", task.fields)
    steps_rows = drawn_prompts(train_rows, kw["grpo"].prompts_per_step, kw["trainer"].seed, kw["trainer"].max_steps)
    record: dict[str, list] = {"questions": [], "reward": []}
    reward = kw["reward"]

    def recorded(fn, first: bool):
        def reward_fn(prompts, completions, **columns):
            if first:  # one group of G per prompt, in order: keep each prompt once
                record["questions"].append(columns["question"][:: kw["grpo"].num_generations])
            return fn(prompts, completions, **columns)

        reward_fn.__name__ = fn.__name__
        return reward_fn

    class RewardLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                record["reward"].append(float(logs["reward"]))

    funcs = [recorded(reward_for_trl(name, task, reward.kwargs.get(name, {})), i == 0)
             for i, name in enumerate(reward.functions)]
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=trl_grpo_config(kw, out_dir / "trl"),
                          train_dataset=trl_dataset(tokenizer, kw["templates"], task, steps_rows),
                          processing_class=tokenizer, callbacks=[RewardLog()])
    trainer.train()
    trainer.save_model(str(out_dir / "hf_model"))
    return record


def weight_distance(a: str | Path, b: str | Path) -> float:
    """L2 norm of the difference between two exported models' weights (tied weights counted once)."""
    import torch
    from transformers import AutoModelForCausalLM

    sa, sb = (dict(AutoModelForCausalLM.from_pretrained(str(m), dtype=torch.float32).named_parameters()) for m in (a, b))
    return float(sum(((sa[k] - sb[k]) ** 2).sum() for k in sa) ** 0.5)


def held_out(model: str, kw: dict[str, Any], rows: list[dict]) -> dict:
    """The questions `model` was scored on and its greedy correctness on each (rcl's runner, direct protocol): the
    one scoring every model of the control gets."""
    from experiments.teaching_runner import build_runner
    from experiments.teaching_study import test_outcomes

    runner, settings = build_runner(model, model, kw)
    outcome = test_outcomes(runner, settings, rows)
    return {"questions": outcome["questions"], "correct": outcome["with"]}


def compare(before: list[float], after: dict[str, list[list[float]]]) -> dict:
    """Per framework: each seed's and the pooled change against `before`; rcl minus TRL per seed and pooled, all
    paired over the same problems."""
    from experiments.teaching_study import _estimate, rl_changes
    from rcl.eval.stats import paired_delta

    pooled = {fw: [statistics.fmean(v) for v in zip(*after[fw])] for fw in FRAMEWORKS}
    return {
        "change": {fw: rl_changes(before, after[fw]) for fw in FRAMEWORKS},
        "rcl_minus_trl": {
            "per_seed": [_estimate(paired_delta(r, t, LEVEL)) for r, t in zip(after["rcl"], after["trl"])],
            "pooled": _estimate(paired_delta(pooled["rcl"], pooled["trl"], LEVEL)),
        },
    }


def table(results: dict) -> str:
    """The control's table, every number read from `results` (control.json)."""
    from experiments.benchmarks.common import format_table
    from experiments.teaching_study import _fmt

    name = {"rcl": "rcl", "trl": "TRL"}
    cmp = results["comparison"]
    before = statistics.fmean(results["before"])
    rows = [["SFT'd student (before RL)", "", f"{before:.3f}", "", "", "", ""]]
    for fw in FRAMEWORKS:
        for run, change in zip(results["runs"][fw], cmp["change"][fw]["per_seed"]):
            rows.append([name[fw], str(run["seed"]), f"{statistics.fmean(run['after']):.3f}", _fmt(change, "+"),
                         f"{run['weight_change_l2']:.3f}", f"{_reward_ends(run['reward'])}",
                         f"{run['seconds']:.0f}"])
        mean_after = statistics.fmean(statistics.fmean(run["after"]) for run in results["runs"][fw])
        rows.append([f"{name[fw]}, pooled over seeds", "", f"{mean_after:.3f}", _fmt(cmp["change"][fw]["pooled"], "+"),
                     "", "", ""])
    for run, delta in zip(results["runs"]["rcl"], cmp["rcl_minus_trl"]["per_seed"]):
        rows.append(["rcl − TRL", str(run["seed"]), "", _fmt(delta, "+"), "", "", ""])
    rows.append(["rcl − TRL, pooled over seeds", "", "", _fmt(cmp["rcl_minus_trl"]["pooled"], "+"), "", "", ""])
    headers = ("run", "seed", f"test accuracy ({len(results['before'])} problems)", "change, 95% CI",
               "weights moved (L2)", "train reward, first → last 10 steps", "s")
    return format_table(headers, rows) + "\n" + verdict(cmp["rcl_minus_trl"]["pooled"])


def _reward_ends(rewards: list[float]) -> str:
    if not rewards:
        return ""
    n = min(10, len(rewards))
    return f"{statistics.fmean(rewards[:n]):.3f} → {statistics.fmean(rewards[-n:]):.3f}"


def verdict(pooled: dict) -> str:
    if pooled["high"] < 0:
        return "TRL ends higher than rcl (pooled interval below zero): look for the gap in rcl's loop."
    if pooled["low"] > 0:
        return "rcl ends higher than TRL (pooled interval above zero)."
    return "No measurable gap between rcl's loop and TRL's (the pooled interval of rcl − TRL contains zero)."


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/quickstart_student_sft/hf_model", help="the SFT'd start model")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=120, help="GRPO steps per seed and framework")
    parser.add_argument("--test-problems", type=int, default=400, help="unseen problems scored before and after")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both frameworks")
    parser.add_argument("--out", default="runs/teaching_control")
    parser.add_argument("--overrides", nargs=argparse.REMAINDER, default=[],
                        help="recipe overrides for both frameworks, e.g. --optimizer.learning_rate 1e-4")
    args = parser.parse_args(argv)

    import torch

    from experiments.teaching_runner import unseen_problems
    from rcl.tiny_models import resolve_model

    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = recipe_kwargs(args.recipe, args.seeds[0], args.steps, model, out, args.threads, args.overrides)
    check_comparable(first)
    data = first["data"]
    rows = unseen_problems(args.test_problems, data.synthetic_size, data.synthetic_seed, tuple(data.synthetic_levels))
    start_scores = held_out(model, first, rows)
    before = start_scores["correct"]
    runs: dict[str, list[dict]] = {fw: [] for fw in FRAMEWORKS}
    for seed in args.seeds:
        for fw in FRAMEWORKS:
            run_dir = out / f"{fw}_seed_{seed}"
            kw = recipe_kwargs(args.recipe, seed, args.steps, model, run_dir, args.threads, args.overrides)
            print(f"\n=== {fw}, seed {seed} -> {run_dir}", flush=True)
            start = time.perf_counter()
            record = run_rcl(kw) if fw == "rcl" else run_trl(kw, model)
            torch.set_num_threads(args.threads)
            seconds = time.perf_counter() - start
            scored = held_out(str(run_dir / "hf_model"), kw, rows)
            runs[fw].append({"seed": seed, "seconds": seconds, **record, "after": scored["correct"],
                             "scored_questions": scored["questions"],
                             "weight_change_l2": weight_distance(model, run_dir / "hf_model")})
    results = {
        "settings": vars(args), "model": model,
        "test_rows": [{"question": r["question"], "ground_truth": r["ground_truth"]} for r in rows],
        "before": before, "before_questions": start_scores["questions"], "runs": runs,
        "comparison": compare(before, {fw: [r["after"] for r in runs[fw]] for fw in FRAMEWORKS}),
    }
    path = out / "control.json"
    path.write_text(json.dumps(results, indent=2))
    print(table(json.loads(path.read_text())))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
