"""One seed's study summary from the files its runs wrote: every number here is read from results.json,
samples.jsonl, generations/, the SFT arm's metrics.csv, the RLVR arm's history.jsonl or the exported weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.sft_vs_rlvr import analysis
from experiments.sft_vs_rlvr.study import StudyError
from experiments.sft_vs_rlvr.weights import group_summary, load_state, relative_changes
from rcl.eval.generate import generation_path

MODELS = ("sft", "rlvr", "base")


def find_entry(results: dict, model: str, task: str) -> dict:
    for e in results["results"]:
        if (e["model"], e["task"], e["protocol"]) == (model, task, "direct"):
            return e
    raise KeyError(f"results.json has no direct entry for {model} on {task}")


def find_difference(results: dict, model: str, reference: str, task: str) -> dict | None:
    return next((d for d in results["paired_differences"]
                 if (d["model"], d["reference"], d["task"], d["protocol"]) == (model, reference, task, "direct")), None)


def headline(entry: dict) -> dict:
    return {k: entry[k] for k in ("accuracy", "ci_low", "ci_high", "ci_level", "n", "problems", "pass_at_k",
                                  "pass_at_k_ci", "mean_tokens", "completion_rate")}


def sample_texts(eval_dir: Path, model: str, task: str) -> tuple[dict[str, list], dict[str, dict]]:
    """row id -> the model's completion texts (sample order), and row id -> the row."""
    texts: dict[str, list] = {}
    rows: dict[str, dict] = {}
    lines = analysis.read_jsonl(generation_path(eval_dir, model, task, "direct"))
    for line in sorted(lines, key=lambda line: line["sample_index"]):
        texts.setdefault(line["row_id"], []).append(line["completion"])
        rows[line["row_id"]] = line["row"]
    return texts, rows


def summarize_seed(study: Any, seed: int, out: Path, plan: dict, recipes: dict, templates: dict[str, str],
                   eval_template: str, commands: dict[str, str], eval_command: str) -> dict:
    eval_dir = out / "eval"
    results_file = eval_dir / "results.json"
    import json

    results = json.loads(results_file.read_text())
    records = analysis.read_jsonl(eval_dir / results["samples_file"])
    task, ood = study.report.main_task, study.report.ood_task
    history = analysis.read_jsonl(out / "rlvr" / "history.jsonl")
    metrics_csv = next((out / "sft").glob("csv/**/metrics.csv"))
    curves = {"sft": analysis.sft_curves(metrics_csv, plan["sft"]["samples_per_step"]),
              "rlvr": analysis.rl_curves(history, plan["rlvr"]["samples_per_step"])}
    done = {"sft": max((p[0] for p in curves["sft"]["loss"]), default=0),
            "rlvr": max((int(h["step"]) for h in history if "reward" in h), default=0)}
    short = {arm: (done[arm], plan[arm]["optimizer_steps"]) for arm in done if done[arm] != plan[arm]["optimizer_steps"]}
    if short:
        raise StudyError("an arm did not train its budget (steps logged, planned): " + repr(short))
    generations = recipes["rlvr"]["grpo"]["num_generations"]
    extra = {"sft": {"completions": plan["sft"]["training_samples"], **analysis.sft_tokens(metrics_csv),
                     "generated_tokens": 0},
             "rlvr": {"completions": plan["rlvr"]["training_samples"] * generations, **analysis.rl_tokens(history)}}
    arms = []
    for arm in ("sft", "rlvr"):
        entry = find_entry(results, arm, task)
        budget = {"measure": study.budget.measure, "value": plan[arm][study.budget.measure],
                  "optimizer_steps": plan[arm]["optimizer_steps"], "optimizer_steps_logged": done[arm],
                  "training_samples": plan[arm]["training_samples"], **extra[arm]}
        arms.append({"name": arm, "budget": budget, "eval_rows_hash": results["rows_sha256"][task],
                     "template_hash": templates[arm], "eval_template_hash": eval_template,
                     "results_file": str(results_file), **headline(entry),
                     "ood": headline(find_entry(results, arm, ood)) if ood else None,
                     "command": commands[arm], "seed": seed})
    difference = find_difference(results, "rlvr", "sft", task)
    if difference is None:
        raise KeyError("results.json has no rlvr - sft paired difference")
    per_problem = {m: analysis.per_problem_accuracy([r for r in records if r["model"] == m and r["task"] == task])
                   for m in MODELS}
    texts = {m: sample_texts(eval_dir, m, task) for m in MODELS}
    diversity = {}
    for m in MODELS:
        answers: dict[str, list] = {}
        for r in sorted((r for r in records if r["model"] == m and r["task"] == task),
                        key=lambda r: r["sample_index"]):
            answers.setdefault(r["row_id"], []).append(r["details"].get("extracted"))
        diversity[m] = analysis.diversity(answers, texts[m][0])
    patterns = analysis.error_patterns(per_problem["rlvr"], per_problem["sft"])
    rows = texts["sft"][1]

    def examples(ids: list[str]) -> list[dict]:
        return [{"row_id": i, "question": rows[i].get("question"), "gold": rows[i].get("ground_truth"),
                 "sft_accuracy": per_problem["sft"][i], "rlvr_accuracy": per_problem["rlvr"][i],
                 "sft": texts["sft"][0][i][:2], "rlvr": texts["rlvr"][0][i][:2]}
                for i in ids[: study.report.error_examples]]

    base_state = load_state(Path(_model_dir(str(out.parent / "base" / "hf_model"), results)))
    weights = {}
    for arm in ("sft", "rlvr"):
        rows_w = relative_changes(base_state, load_state(out / arm / "hf_model"))
        weights[arm] = {"groups": group_summary(rows_w), "top": rows_w[: study.report.top_layers],
                        "all": [{"name": r["name"], "group": r["group"], "relative_change": r["relative_change"]}
                                for r in rows_w]}
    target = study.report.target_accuracy
    return {
        "seed": seed, "out_dir": str(out), "results_file": str(results_file), "eval_command": eval_command,
        "arms": arms,
        "base": {"name": "base", **headline(find_entry(results, "base", task)),
                 "ood": headline(find_entry(results, "base", ood)) if ood else None},
        "difference": {**{k: difference[k] for k in ("delta", "ci_low", "ci_high", "ci_level", "problems")},
                       "task": task, "of": "rlvr - sft", "source": f"{results_file}: paired_differences"},
        "ood_difference": _ood_difference(results, ood),
        "curves": curves,
        "sample_efficiency": {"target_accuracy": target, "budget_axis": "training_samples",
                              **{arm: analysis.first_reaching(curves[arm]["accuracy"], target) for arm in curves}},
        "diversity": diversity,
        "errors": {"rlvr_right_sft_wrong": {"count": len(patterns["a_only"]), "examples": examples(patterns["a_only"])},
                   "sft_right_rlvr_wrong": {"count": len(patterns["b_only"]), "examples": examples(patterns["b_only"])},
                   "problems": len(per_problem["sft"]), "threshold": 0.5},
        "weights": weights,
    }


def _model_dir(default: str, results: dict) -> str:
    """The base model's folder as the evaluation loaded it."""
    for m in results["config"].get("models", []):
        if m["name"] == "base":
            return m["model"]["model_name_or_path"]
    return default


def _ood_difference(results: dict, ood: str | None) -> dict | None:
    if not ood:
        return None
    d = find_difference(results, "rlvr", "sft", ood)
    return None if d is None else {k: d[k] for k in ("delta", "ci_low", "ci_high", "ci_level", "problems")}
