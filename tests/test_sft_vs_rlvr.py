"""The SFT-vs-RLVR study: its pure parts against hand-computed values, its recipes against the real entry points, and
(slow) a miniature study through the real `rcl fit` / `rcl evaluate` runs."""

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml

from experiments.sft_vs_rlvr import analysis
from experiments.sft_vs_rlvr.__main__ import parse_study
from experiments.sft_vs_rlvr.config import Arms, Budget, Report, Study
from experiments.sft_vs_rlvr.study import (
    StudyError,
    check_same_data,
    eval_recipe_for,
    load_yaml,
    plan_budget,
    rl_samples_per_step,
    sft_samples_per_step,
    with_overrides,
)
from experiments.sft_vs_rlvr.weights import group_summary, module_group, relative_changes

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "lightning_configs"
STUDIES = ("sft_vs_rlvr_quickstart.yaml", "sft_vs_rlvr_gsm8k.yaml")


def test_module_groups_of_llama_names():
    assert module_group("model.layers.0.self_attn.q_proj.weight") == "attention"
    assert module_group("model.layers.3.mlp.down_proj.weight") == "mlp"
    assert module_group("model.embed_tokens.weight") == "embeddings"
    assert module_group("lm_head.weight") == "embeddings"
    assert module_group("model.layers.0.input_layernorm.weight") == "norms"
    assert module_group("model.norm.weight") == "norms"


def test_weight_difference_ranks_the_perturbed_layer_first_with_its_relative_norm():
    torch.manual_seed(0)
    base = {"model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8),
            "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8),
            "model.layers.0.input_layernorm.weight": torch.ones(8)}
    tuned = {k: v.clone() for k, v in base.items()}
    noise = torch.randn(16, 8)
    w = base["model.layers.0.mlp.up_proj.weight"]
    tuned["model.layers.0.mlp.up_proj.weight"] = w + 0.25 * noise * w.norm() / noise.norm()  # ||ΔW|| = 0.25 ||W||
    tuned["model.layers.0.self_attn.q_proj.weight"][0, 0] += 0.01
    rows = relative_changes(base, tuned)
    assert rows[0]["name"] == "model.layers.0.mlp.up_proj.weight"
    assert rows[0]["relative_change"] == pytest.approx(0.25, rel=1e-6)
    q = base["model.layers.0.self_attn.q_proj.weight"]
    assert rows[1]["relative_change"] == pytest.approx(0.01 / q.double().norm().item(), rel=1e-6)
    assert rows[2]["relative_change"] == 0.0
    groups = group_summary(rows)
    assert groups["mlp"]["pooled"] == pytest.approx(0.25, rel=1e-6)
    assert groups["norms"] == {"tensors": 1, "mean": 0.0, "max": 0.0, "pooled": 0.0}


def test_relative_change_of_a_zero_tensor_and_mismatched_shapes():
    rows = relative_changes({"a.bias": torch.zeros(3), "b.weight": torch.ones(2)},
                            {"a.bias": torch.ones(3), "b.weight": torch.ones(3)})
    assert [(r["name"], r["relative_change"]) for r in rows] == [("a.bias", math.inf)]


def test_budget_in_training_samples_gives_each_arm_whole_steps():
    plan = plan_budget(Budget("training_samples", 2640), {"sft": 16, "rlvr": 33})
    assert plan["sft"] == {"optimizer_steps": 165, "training_samples": 2640, "samples_per_step": 16}
    assert plan["rlvr"] == {"optimizer_steps": 80, "training_samples": 2640, "samples_per_step": 33}
    with pytest.raises(StudyError, match="multiple of 33"):
        plan_budget(Budget("training_samples", 2000), {"sft": 16, "rlvr": 33})


def test_budget_in_optimizer_steps_records_the_samples():
    plan = plan_budget(Budget("optimizer_steps", 10), {"sft": 4, "rlvr": 8})
    assert (plan["sft"]["training_samples"], plan["rlvr"]["training_samples"]) == (40, 80)
    assert plan["sft"]["optimizer_steps"] == plan["rlvr"]["optimizer_steps"] == 10


def test_overrides_reach_the_checked_recipe_and_different_data_is_refused():
    sft = load_yaml(CONFIGS / "sft_vs_rlvr_quickstart_sft.yaml")
    rl = load_yaml(CONFIGS / "sft_vs_rlvr_quickstart_rlvr.yaml")
    check_same_data(sft, rl)
    assert (sft_samples_per_step(sft), rl_samples_per_step(rl)) == (8, 8)
    changed = with_overrides(rl, ["--data.init_args.synthetic_size", "600", "--config", "x.yaml",
                                  "--data.init_args.columns", "{solution: answer}"])
    assert changed["data"]["init_args"]["synthetic_size"] == 600
    assert changed["data"]["init_args"]["columns"] == {"solution": "answer"}
    assert rl["data"]["init_args"]["synthetic_size"] == 6000  # the loaded recipe is not changed
    with pytest.raises(StudyError, match="synthetic_size"):
        check_same_data(sft, changed)
    with pytest.raises(StudyError, match="evaluation"):
        check_same_data(sft, rl, changed["data"])


def test_the_eval_copy_lists_sft_first_and_keeps_each_models_engine():
    recipe = load_yaml(CONFIGS / "sft_vs_rlvr_gsm8k_eval.yaml")
    recipe["models"][1]["engine"] = {**recipe["models"][1]["engine"], "urls": ["http://x:1"]}
    copy = eval_recipe_for(recipe, {"sft": "a", "rlvr": "b", "base": "c"}, Path("out/eval"))
    assert [m["name"] for m in copy["models"]] == ["sft", "rlvr", "base"]
    assert [m["model"]["model_name_or_path"] for m in copy["models"]] == ["a", "b", "c"]
    assert copy["models"][1]["engine"]["urls"] == ["http://x:1"]
    assert copy["run"]["out_dir"] == "out/eval"


def test_analysis_maths():
    curve = [(0, 0, 0.1), (5, 40, 0.45), (10, 80, 0.6), (15, 120, 0.4)]
    assert analysis.first_reaching(curve, 0.5) == 80
    assert analysis.first_reaching(curve, 0.9) is None
    assert analysis.entropy([2, 2]) == pytest.approx(math.log(2))
    assert analysis.entropy([4]) == 0.0
    d = analysis.diversity({"a": ["1", "1", "2", None], "b": ["3", "3", "3", "3"]},
                           {"a": ["x", "y", "z", "z"], "b": ["w"] * 4})
    assert d["distinct_answers"] == pytest.approx((3 + 1) / 2)
    assert d["distinct_texts"] == pytest.approx((3 + 1) / 2)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert d["answer_entropy"] == pytest.approx(h / 2)
    patterns = analysis.error_patterns({"p": 1.0, "q": 0.0, "r": 0.5}, {"p": 0.0, "q": 0.75, "r": 0.5})
    assert patterns == {"a_only": ["p"], "b_only": ["q"]}
    sp = analysis.spread([0.2, 0.4, 0.6])
    assert (sp["mean"], sp["min"], sp["max"]) == pytest.approx((0.4, 0.2, 0.6))
    assert sp["std"] == pytest.approx(0.2)


def test_token_totals_of_both_arms(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,train/tokens_seen,train/loss_tokens_seen,val/exact_match\n"
                    "0,0,2.5,120,30,\n0,1,2.0,250,61,\n0,1,,,,0.25\n")
    assert analysis.sft_tokens(path) == {"tokens_processed": 250.0, "loss_tokens": 61.0}
    old = tmp_path / "old.csv"
    old.write_text("epoch,step,train/loss\n0,0,2.5\n")
    assert analysis.sft_tokens(old) == {"tokens_processed": None, "loss_tokens": None}
    history = [{"step": 0, "eval/accuracy": 0.1},
               {"step": 1, "reward": 0.5, "train/tokens": 100.0, "train/completion_tokens": 40.0, "tokens/policy": 40.0},
               {"step": 2, "reward": 0.6, "train/tokens": 90.0, "train/completion_tokens": 30.0, "tokens/policy": 30.0},
               {"step": 2, "eval/accuracy": 0.2}]
    assert analysis.rl_tokens(history) == {"tokens_processed": 190.0, "loss_tokens": 70.0, "generated_tokens": 70.0}


def test_sft_curves_put_validation_at_the_steps_done(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/exact_match\n0,0,2.5,\n0,1,2.0,\n0,1,,0.25\n")
    curves = analysis.sft_curves(path, 8)
    assert curves["loss"] == [(1, 8, 2.5), (2, 16, 2.0)]
    assert curves["accuracy"] == [(2, 16, 0.25)]


@pytest.mark.parametrize("name", STUDIES)
def test_study_recipes_parse_and_name_recipes_that_exist(name):
    study = parse_study(["--config", str(CONFIGS / name)])
    written = yaml.safe_load((CONFIGS / name).read_text())
    for group, cls in (("budget", Budget), ("arms", Arms), ("report", Report)):  # every default pinned
        assert set(written[group]) == {f.name for f in fields(cls)}, f"{name}: {group}"
    assert set(written) == {f.name for f in fields(Study)}
    for recipe in (study.arms.base_recipe, study.arms.sft_recipe, study.arms.rlvr_recipe, study.arms.eval_recipe):
        assert recipe is None or (ROOT / recipe).exists()
    sft = with_overrides(load_yaml(ROOT / study.arms.sft_recipe), study.arms.sft_args)
    rl = with_overrides(load_yaml(ROOT / study.arms.rlvr_recipe), study.arms.rlvr_args)
    main = next(t for t in load_yaml(ROOT / study.arms.eval_recipe)["tasks"] if t["label"] == study.report.main_task)
    check_same_data(sft, rl, main["data"])
    plan = plan_budget(study.budget, {"sft": sft_samples_per_step(sft), "rlvr": rl_samples_per_step(rl)})
    assert plan["sft"]["training_samples"] == plan["rlvr"]["training_samples"] == study.budget.value
    assert rl["grpo"]["protocol"] == "direct" and rl["reward"]["functions"] == {"correctness": pytest.approx(
        rl["reward"]["functions"]["correctness"])}
    sft_t, rl_t = sft["data"]["init_args"]["templates"], rl["templates"]
    eval_t = load_yaml(ROOT / study.arms.eval_recipe)["templates"]
    assert sft_t["student_system"] == rl_t["student_system"] == eval_t["student_system"]
    assert sft_t["student_baseline"] == rl_t["student_baseline"] == eval_t["student_baseline"]


def test_wandb_puts_both_arms_in_the_study_group_and_the_flags_parse(capsys):
    """With W&B on, the SFT arm gets a WandbLogger (beside the CLI's CSV and TensorBoard) and the RLVR arm the wandb
    logger, both in the study's group with their files under the arm's folder; the flags parse against the real CLIs."""
    from experiments.sft_vs_rlvr.study import rl_overrides, sft_overrides
    from rcl.__main__ import main

    rl = rl_overrides("base", 10, 1, Path("r"), 2, wandb_group="study-x")
    assert json.loads(rl[rl.index("--trainer.loggers") + 1]) == ["csv", "tensorboard", "wandb"]
    assert rl[rl.index("--trainer.wandb_group") + 1] == "study-x"
    sft = sft_overrides("base", 10, 1, Path("s"), 2, wandb_group="study-x")
    (logger,) = json.loads(sft[sft.index("--trainer.logger") + 1])
    assert logger["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    assert logger["init_args"]["save_dir"] == "s" and logger["dict_kwargs"] == {"group": "study-x"}
    assert "--trainer.logger" not in sft_overrides("base", 10, 1, Path("s"), 2, wandb_group=None)
    off = rl_overrides("base", 10, 1, Path("r"), 2, wandb_group=None)
    assert "--trainer.wandb_group" not in off and json.loads(off[off.index("--trainer.loggers") + 1]) == [
        "csv", "tensorboard"]
    for recipe, flags in (("sft_vs_rlvr_quickstart_sft.yaml", sft), ("sft_vs_rlvr_quickstart_rlvr.yaml", rl)):
        with pytest.raises(SystemExit) as stop:
            main(["fit", "--config", str(CONFIGS / recipe), *flags, "--print_config"])
        assert stop.value.code in (0, None)
        resolved = yaml.safe_load("\n".join(line for line in capsys.readouterr().out.splitlines()
                                             if not line.startswith("[20")))
        if "grpo" in resolved:
            assert resolved["trainer"]["wandb_group"] == "study-x"
        else:
            (parsed,) = resolved["trainer"]["logger"]
            # with wandb installed, jsonargparse resolves WandbLogger's **kwargs to wandb.init's and moves the group
            # into init_args; without it, the group stays in dict_kwargs
            kwargs = {**parsed["init_args"], **parsed.get("dict_kwargs", {})}
            assert (kwargs["group"], kwargs["project"], kwargs["save_dir"]) == ("study-x", "rcl", "s")


def test_lora_arms_get_the_study_seed_as_their_adapter_init_seed():
    from experiments.sft_vs_rlvr.study import lora_seed_args

    sft = load_yaml(CONFIGS / "quickstart_sft_lora.yaml")
    rl = load_yaml(CONFIGS / "quickstart_rcl_lora.yaml")
    assert lora_seed_args("sft", sft, 7) == ["--model.init_args.lora.init_seed", "7"]
    assert lora_seed_args("rlvr", rl, 7) == ["--lora.init_seed", "7"]
    assert lora_seed_args("sft", load_yaml(CONFIGS / "sft_vs_rlvr_quickstart_sft.yaml"), 7) == []
    assert lora_seed_args("rlvr", load_yaml(CONFIGS / "sft_vs_rlvr_quickstart_rlvr.yaml"), 7) == []


def test_seeds_flag_takes_a_space_separated_list():
    study = parse_study(["--config", str(CONFIGS / STUDIES[0]), "--seeds", "1", "2", "3", "--budget.value", "240"])
    assert study.seeds == [1, 2, 3] and study.budget.value == 240


def miniature_study(tmp_path: Path, wandb: bool = False) -> Path:
    """A study recipe of a few steps per arm on 600 problems (5 base steps, 3 per arm, 6 held-out problems x 2
    samples), writing under tmp_path/study; returns its path."""
    small = ["--data.init_args.synthetic_size", "600", "--data.init_args.val_size", "40"]
    evaluation = load_yaml(CONFIGS / "sft_vs_rlvr_quickstart_eval.yaml")
    for task in evaluation["tasks"]:
        task.update(num_rows=6, samples=2)
    evaluation["tasks"][0]["data"]["init_args"].update(synthetic_size=600, val_size=40)
    evaluation["stats"].update(pass_k=[1, 2], bootstrap_resamples=100)
    evaluation["run"].update(plots=False, progress=False)
    eval_recipe = tmp_path / "eval.yaml"
    eval_recipe.write_text(yaml.safe_dump(evaluation))
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "name": "mini", "out_dir": str(tmp_path / "study"), "seeds": [3], "wandb": wandb,
        "budget": {"measure": "training_samples", "value": 24},
        "arms": {"base_recipe": str(CONFIGS / "sft_vs_rlvr_quickstart_base.yaml"),
                 "sft_recipe": str(CONFIGS / "sft_vs_rlvr_quickstart_sft.yaml"),
                 "rlvr_recipe": str(CONFIGS / "sft_vs_rlvr_quickstart_rlvr.yaml"), "eval_recipe": str(eval_recipe),
                 "base_args": ["--trainer.max_steps", "5", "--trainer.val_check_interval", "5",
                               "--model.init_args.val_generation_samples", "4", *small],
                 "sft_args": ["--model.init_args.val_generation_samples", "4", "--trainer.limit_val_batches", "1",
                              "--trainer.enable_progress_bar", "false", *small],
                 "rlvr_args": ["--eval.num_prompts", "4", *small]},
        "report": {"curve_points": 1}}))
    return config


def check_seeds_and_spread(document: dict, seeds: list[int]) -> None:
    """Both arms for every seed, each seed's own folder and results, and the spread over them."""
    assert [s["seed"] for s in document["seeds"]] == seeds
    for s in document["seeds"]:
        assert [a["name"] for a in s["arms"]] == ["sft", "rlvr"] and {a["seed"] for a in s["arms"]} == {s["seed"]}
        assert Path(s["out_dir"]).name == f"seed-{s['seed']}" and Path(s["results_file"]).is_file()
        assert (Path(s["out_dir"]) / "report.md").is_file()
    for key, values in (("sft_accuracy", [s["arms"][0]["accuracy"] for s in document["seeds"]]),
                        ("rlvr_accuracy", [s["arms"][1]["accuracy"] for s in document["seeds"]]),
                        ("delta", [s["difference"]["delta"] for s in document["seeds"]])):
        assert document["spread"][key] == pytest.approx(analysis.spread(values)), key
        assert document["spread"][key]["n"] == len(seeds)


@pytest.mark.slow
def test_a_miniature_study_matches_budgets_hashes_and_reads_its_weights(tmp_path, models_dir, monkeypatch):
    from experiments.sft_vs_rlvr.study import run_study

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RCL_MODELS_DIR", str(models_dir))
    study = run_study(parse_study(["--config", str(miniature_study(tmp_path)), "--seeds", "1", "2"]))
    on_disk = json.loads((tmp_path / "study" / "study.json").read_text())
    assert on_disk["arms"] == json.loads(json.dumps(study["arms"]))
    check_seeds_and_spread(on_disk, [1, 2])
    report = (tmp_path / "study" / "report.md").read_text()
    assert "## Spread over seeds 1, 2" in report
    for seed in on_disk["seeds"]:
        arms = {a["name"]: a for a in seed["arms"]}
        assert arms["sft"]["eval_rows_hash"] == arms["rlvr"]["eval_rows_hash"]
        assert arms["sft"]["template_hash"] == arms["rlvr"]["template_hash"] == arms["sft"]["eval_template_hash"]
        for arm in arms.values():
            budget = arm["budget"]
            assert budget["measure"] == "training_samples" and budget["value"] == budget["training_samples"] == 24
            assert budget["optimizer_steps"] == budget["optimizer_steps_logged"] == 3
            assert 0 < budget["loss_tokens"] < budget["tokens_processed"]
            results = json.loads(Path(arm["results_file"]).read_text())
            entry = next(e for e in results["results"] if (e["model"], e["task"]) == (arm["name"], "heldout"))
            assert (arm["accuracy"], arm["ci_low"], arm["ci_high"]) == (entry["accuracy"], entry["ci_low"],
                                                                        entry["ci_high"])
        # RLVR: 3 steps of 8 prompts x 8 sampled completions; its loss is on exactly what it generated
        assert arms["rlvr"]["budget"]["completions"] == 24 * 8
        assert arms["rlvr"]["budget"]["loss_tokens"] == arms["rlvr"]["budget"]["generated_tokens"] > 0
        assert arms["sft"]["budget"]["generated_tokens"] == 0
        history = analysis.read_jsonl(Path(seed["out_dir"]) / "rlvr" / "history.jsonl")
        assert arms["rlvr"]["budget"]["tokens_processed"] == sum(h["train/tokens"] for h in history if "reward" in h)
        difference = next(d for d in results["paired_differences"]
                          if (d["model"], d["reference"], d["task"]) == ("rlvr", "sft", "heldout"))
        assert seed["difference"]["delta"] == difference["delta"]
    assert on_disk["difference"] == on_disk["seeds"][0]["difference"]
    # A fresh `rcl evaluate` of the exported models, from the study's own eval recipe, gives the same numbers.
    from rcl.eval.cli import cli_main

    cli_main(["--config", str(tmp_path / "study" / "seed-1" / "eval.yaml"), "--run.out_dir", str(tmp_path / "fresh")])
    fresh = json.loads((tmp_path / "fresh" / "results.json").read_text())
    for arm in on_disk["arms"]:
        entry = next(e for e in fresh["results"] if (e["model"], e["task"]) == (arm["name"], "heldout"))
        assert (arm["accuracy"], arm["ci_low"], arm["ci_high"], arm["pass_at_k"]) == (
            entry["accuracy"], entry["ci_low"], entry["ci_high"], entry["pass_at_k"])
    seed = on_disk["seeds"][0]
    assert seed["weights"]["sft"]["top"][0]["relative_change"] > 0
    assert len(seed["curves"]["rlvr"]["kl"]) == 3 and len(seed["curves"]["sft"]["loss"]) == 3
    assert "RLVR − SFT" in report and "Weight differences" in report and "tokens processed" in report
    for s in (1, 2):
        assert {p.name for p in (tmp_path / "study" / f"seed-{s}").glob("*.png")} == {
            "accuracy.png", "learning_curves.png", "weights.png"}


def wandb_run(run_dir: Path) -> tuple[str, str]:
    """The group and the name in an offline W&B run folder's run record, read by wandb's own reader of its
    transaction log (`wandb leet inspect --json`: one JSON record a line)."""
    import subprocess
    import sys

    (log,) = run_dir.glob("run-*.wandb")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    run = next(r["run"] for r in map(json.loads, out.splitlines()) if r.get("type") == "run")
    return run.get("run_group"), run.get("display_name")


@pytest.mark.slow
def test_a_miniature_study_with_seeds_logs_both_arms_to_one_offline_wandb_group(tmp_path, models_dir, monkeypatch):
    pytest.importorskip("wandb", reason="W&B is the optional `wandb` extra (pip install -e '.[wandb]')")
    from experiments.sft_vs_rlvr.study import run_study

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RCL_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the arms' save_dir must win over it
    document = run_study(parse_study(["--config", str(miniature_study(tmp_path, wandb=True)), "--seeds", "1", "2"]))
    check_seeds_and_spread(document, [1, 2])
    for seed in (1, 2):
        for arm in ("sft", "rlvr"):
            runs = list((tmp_path / "study" / f"seed-{seed}" / arm / "wandb").glob("offline-run-*"))
            assert len(runs) == 1, (seed, arm, runs)
            assert wandb_run(runs[0]) == ("mini", f"mini-{arm}-seed{seed}")
