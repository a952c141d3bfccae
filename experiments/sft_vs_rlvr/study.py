"""The SFT-versus-RLVR study: base -> SFT arm and RLVR arm (ordinary `python -m rcl fit` runs of their recipes, same
seed, same training prompts, same template, matched budget) -> one `python -m rcl evaluate` of sft, rlvr and base
-> study.json, report.md and plots. See experiments/sft_vs_rlvr/__init__.py for the layout."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from experiments.sft_vs_rlvr.config import Budget, Study

ARMS = ("sft", "rlvr")
SHARED_DATA_KEYS = ("dataset", "dataset_config", "split", "synthetic_size", "synthetic_seed", "synthetic_levels", "synthetic_kind",
                    "val_size", "seed")
"""Data-module arguments both arms must share: the same rows, split the same way (the same training prompts)."""


class StudyError(RuntimeError):
    pass


def load_yaml(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text()) or {}


def sft_samples_per_step(recipe: dict) -> int:
    """Training examples per optimizer step of an SFT recipe: batch x accumulation x devices x nodes."""
    trainer = recipe.get("trainer", {})
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int):
        raise StudyError(f"the SFT recipe's trainer.devices must be a number for budget matching, got {devices!r}")
    return (int(recipe["data"]["init_args"]["batch_size"]) * int(trainer.get("accumulate_grad_batches", 1))
            * devices * int(trainer.get("num_nodes", 1)))


def rl_samples_per_step(recipe: dict) -> int:
    """Training prompts per optimizer step of an RL recipe (each sampled grpo.num_generations times)."""
    return int(recipe["grpo"]["prompts_per_step"])


def plan_budget(budget: Budget, samples_per_step: dict[str, int]) -> dict[str, dict[str, int]]:
    """Each arm's optimizer steps and training samples under the matched measure. Refuses a budget that does not
    divide into whole steps (the arms would not be matched)."""
    out = {}
    for arm, per_step in samples_per_step.items():
        if budget.measure == "optimizer_steps":
            steps = budget.value
        else:
            if budget.value % per_step:
                raise StudyError(f"budget {budget.value} training samples is not a whole number of {arm} steps of "
                                 f"{per_step}: pick a multiple of {per_step}")
            steps = budget.value // per_step
        if steps < 1:
            raise StudyError(f"the budget gives the {arm} arm {steps} steps")
        out[arm] = {"optimizer_steps": steps, "training_samples": steps * per_step, "samples_per_step": per_step}
    return out


def with_overrides(recipe: dict, args: list[str]) -> dict:
    """The recipe with `--a.b.c value` flags applied (values read as YAML, as jsonargparse reads them); `--config`
    flags are skipped. What the study checks is then what the run gets."""
    import copy

    out = copy.deepcopy(recipe)
    for flag, value in zip(args[::2], args[1::2]):
        if not flag.startswith("--") or flag == "--config":
            continue
        *parents, leaf = flag[2:].split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    return out


def check_same_data(sft: dict, rl: dict, eval_data: dict | None = None) -> None:
    """Both arms read the same rows and split them the same way, and the evaluation's held-out rows are that split's."""
    a, b = sft["data"]["init_args"], rl["data"]["init_args"]
    differ = [k for k in SHARED_DATA_KEYS if a.get(k) != b.get(k)]
    if differ:
        raise StudyError("the arms' data differ in " + ", ".join(f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in differ)
                         + ": they must train on the same prompts")
    if eval_data is not None:
        c = eval_data.get("init_args", {})
        differ = [k for k in SHARED_DATA_KEYS if c.get(k) != b.get(k)]
        if differ:
            raise StudyError("the evaluation's held-out data differ from the arms' in " + ", ".join(differ)
                             + ": it would not score the arms' held-out split")


def arm_templates(arm: str, recipe: dict) -> dict:
    return (recipe["data"]["init_args"].get("templates") if arm == "sft" else recipe.get("templates")) or {}


def template_hash(tokenizer_dir: str | Path, templates: dict) -> str:
    """sha256 of the solving prompt exactly as the model sees it: the arm's templates rendered through its
    tokenizer's chat template, with the question left as the `{question}` placeholder."""
    from transformers import AutoTokenizer

    from rcl.eval.generate import sha256_json
    from rcl.prompts import PromptTemplates, render_prompt, student_messages

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    prompt = render_prompt(tokenizer, student_messages(PromptTemplates(**templates), "baseline", "{question}"))
    return sha256_json(prompt)


def curve_interval(steps: int, points: int) -> int:
    return max(1, steps // max(1, points))


def wandb_logger(root: Path, group: str) -> dict:
    """The SFT arm's W&B logger (next to the CLI's CSV and TensorBoard): run files under the arm's folder, in the
    study's group, online or offline as WANDB_MODE says (as the RL loop's)."""
    return {"class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "rcl", "save_dir": str(root), "offline": False, "log_model": False},
            "dict_kwargs": {"group": group}}


def sft_overrides(model: str, steps: int, seed: int, root: Path, points: int, wandb_group: str | None) -> list[str]:
    """The study's flags of the SFT arm; `wandb_group` (None: no W&B) adds W&B in that group."""
    out = ["--model.init_args.model_name_or_path", model, "--trainer.max_steps", str(steps),
           "--seed_everything", str(seed), "--trainer.default_root_dir", str(root),
           "--model.init_args.export_dir", str(root / "hf_model"),
           "--trainer.val_check_interval", str(curve_interval(steps, points)), "--trainer.log_every_n_steps", "1",
           "--overwrite", "true"]
    return out + (["--trainer.logger", json.dumps([wandb_logger(root, wandb_group)])] if wandb_group else [])


def rl_overrides(model: str, steps: int, seed: int, root: Path, points: int, wandb_group: str | None) -> list[str]:
    """The study's flags of the RLVR arm; `wandb_group` (None: no W&B) adds W&B in that group."""
    loggers = ["csv", "tensorboard", *(["wandb"] if wandb_group else [])]
    return ["--teacher.model_name_or_path", model, "--student.model_name_or_path", model,
            "--trainer.max_steps", str(steps), "--trainer.seed", str(seed), "--trainer.out_dir", str(root),
            "--trainer.loggers", json.dumps(loggers), *(["--trainer.wandb_group", wandb_group] if wandb_group else []),
            "--trainer.log_every_n_steps", "1", "--eval.every_n_steps", str(curve_interval(steps, points)),
            "--eval.at_start", "true", "--overwrite", "true"]


def lora_seed_args(arm: str, recipe: dict, seed: int) -> list[str]:
    """The study's seed as the adapters' init seed, when the arm's recipe has a `lora` section (peft adapters are
    otherwise seeded apart from the run, and the same seed would not give the same LoRA init)."""
    if arm == "sft":
        has = bool(recipe.get("model", {}).get("init_args", {}).get("lora"))
        return ["--model.init_args.lora.init_seed", str(seed)] if has else []
    return ["--lora.init_seed", str(seed)] if recipe.get("lora") else []


def run_rcl(name: str, args: list[str], env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "rcl", *args]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, env=env).returncode
    if code:
        raise StudyError(f"{name} stopped with exit status {code} (its output is above)")
    return time.perf_counter() - start


def eval_recipe_for(recipe: dict, models: dict[str, str], out_dir: Path) -> dict:
    """The study's copy of the eval recipe: models sft, rlvr, base in that order (sft first, so paired_differences
    hold rlvr - sft and base - sft), each the recipe's entry of that name (else its first entry's shape) with the
    study's folder."""
    if not recipe.get("models"):
        raise StudyError("the eval recipe needs a models list (its first entry is the shape of the study's models)")
    named = {m["name"]: m for m in recipe["models"]}
    entries = []
    for name, path in models.items():
        proto = named.get(name, recipe["models"][0])
        entries.append({**proto, "name": name, "model": {**proto["model"], "model_name_or_path": path},
                        "protocols": ["direct"]})
    return {**recipe, "models": entries, "run": {**recipe.get("run", {}), "out_dir": str(out_dir)}}


def run_seed(study: Study, seed: int, base: str, env: dict[str, str], seconds: dict[str, float]) -> dict:
    """Both arms and the evaluation of one seed; returns the seed's summary (study.json's content for it)."""
    from experiments.sft_vs_rlvr.summary import summarize_seed

    out = Path(study.out_dir) / f"seed-{seed}"
    recipes = {"sft": load_yaml(study.arms.sft_recipe), "rlvr": load_yaml(study.arms.rlvr_recipe)}
    recipes = {arm: with_overrides(recipes[arm], getattr(study.arms, f"{arm}_args")) for arm in ARMS}
    eval_base = load_yaml(study.arms.eval_recipe)
    main = next((t for t in eval_base.get("tasks", []) if (t.get("label") or t["name"]) == study.report.main_task), None)
    if main is None:
        raise StudyError(f"the eval recipe has no task labelled {study.report.main_task!r} (report.main_task)")
    check_same_data(recipes["sft"], recipes["rlvr"], main.get("data"))
    plan = plan_budget(study.budget, {"sft": sft_samples_per_step(recipes["sft"]),
                                      "rlvr": rl_samples_per_step(recipes["rlvr"])})
    points = study.report.curve_points
    group = study.name if study.wandb else None
    commands = {
        "sft": [*study.arms.sft_command, "--config", study.arms.sft_recipe,
                *sft_overrides(base, plan["sft"]["optimizer_steps"], seed, out / "sft", points, group),
                *lora_seed_args("sft", recipes["sft"], seed), *study.arms.sft_args],
        "rlvr": [*study.arms.rlvr_command, "--config", study.arms.rlvr_recipe,
                 *rl_overrides(base, plan["rlvr"]["optimizer_steps"], seed, out / "rlvr", points, group),
                 *lora_seed_args("rlvr", recipes["rlvr"], seed), *study.arms.rlvr_args],
    }
    for arm in ARMS:
        seconds[f"{arm} (seed {seed})"] = run_rcl(f"{arm} arm, seed {seed}", commands[arm],
                                                 {**env, "WANDB_NAME": f"{study.name}-{arm}-seed{seed}"})
    eval_recipe = eval_recipe_for(eval_base,
                                  {"sft": str(out / "sft" / "hf_model"), "rlvr": str(out / "rlvr" / "hf_model"),
                                   "base": base}, out / "eval")
    eval_path = out / "eval.yaml"
    eval_path.write_text(yaml.safe_dump(eval_recipe, sort_keys=False))
    shutil.rmtree(out / "eval", ignore_errors=True)  # the arms were just retrained: no earlier sample is reused
    seconds[f"evaluation (seed {seed})"] = run_rcl(f"evaluation, seed {seed}", ["evaluate", "--config", str(eval_path),
                                                                             *study.arms.eval_args],
                                                   env)
    templates = {arm: template_hash(out / arm / "hf_model", arm_templates(arm, recipes[arm])) for arm in ARMS}
    eval_template = template_hash(base if Path(base).is_dir() else out / "sft" / "hf_model",
                                  eval_recipe.get("templates") or {})
    mismatched = [arm for arm in ARMS if templates[arm] != eval_template]
    if mismatched:
        raise StudyError(f"the {', '.join(mismatched)} arm trained with another prompt than the evaluation's: make "
                         "the recipes' templates (and the tokenizers' chat templates) the same")
    commands_text = {arm: shlex.join(["python", "-m", "rcl", *commands[arm]]) for arm in ARMS}
    return summarize_seed(study, seed, out, plan, recipes, templates, eval_template, commands_text,
                          shlex.join(["python", "-m", "rcl", "evaluate", "--config", str(eval_path),
                                      *study.arms.eval_args]))


def make_base(study: Study, env: dict[str, str], seconds: dict[str, float]) -> str:
    if study.arms.base_recipe is None:
        if not study.arms.base_model:
            raise StudyError("give arms.base_recipe or arms.base_model")
        return study.arms.base_model
    root = Path(study.out_dir) / "base"
    if study.reuse_base and (root / "hf_model" / "config.json").exists():
        print(f"base: reusing {root / 'hf_model'} (reuse_base: true)")
        return str(root / "hf_model")
    seconds["base"] = run_rcl("base", ["fit", "--config", study.arms.base_recipe, "--trainer.default_root_dir",
                                       str(root), "--model.init_args.export_dir", str(root / "hf_model"),
                                       "--overwrite", "true", *study.arms.base_args], env)
    return str(root / "hf_model")


def run_study(study: Study) -> dict:
    from experiments.sft_vs_rlvr.report import write_study

    env = dict(os.environ)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    base = make_base(study, env, seconds)
    per_seed = [run_seed(study, seed, base, env, seconds) for seed in study.seeds]
    seconds["total"] = time.perf_counter() - start
    return write_study(study, per_seed, seconds, asdict(study))
