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


def test_wandb_joins_both_arms_to_the_csv_and_tensorboard_loggers():
    from experiments.sft_vs_rlvr.study import rl_overrides, sft_overrides

    rl = rl_overrides("base", 10, 1, Path("r"), 2, wandb=True)
    assert json.loads(rl[rl.index("--trainer.loggers") + 1]) == ["csv", "tensorboard", "wandb"]
    assert "lightning_configs/loggers/wandb.yaml" in sft_overrides("base", 10, 1, Path("s"), 2, wandb=True)
    assert "lightning_configs/loggers/wandb.yaml" not in sft_overrides("base", 10, 1, Path("s"), 2, wandb=False)
    assert (ROOT / "lightning_configs/loggers/wandb.yaml").exists()


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


@pytest.mark.slow
def test_a_miniature_study_matches_budgets_hashes_and_reads_its_weights(tmp_path, models_dir, monkeypatch):
    from experiments.sft_vs_rlvr.study import run_study

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RCL_MODELS_DIR", str(models_dir))
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
        "name": "mini", "out_dir": str(tmp_path / "study"), "seeds": [3],
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
    study = run_study(parse_study(["--config", str(config)]))
    on_disk = json.loads((tmp_path / "study" / "study.json").read_text())
    assert on_disk["arms"] == json.loads(json.dumps(study["arms"]))
    arms = {a["name"]: a for a in on_disk["arms"]}
    assert set(arms) == {"sft", "rlvr"}
    assert arms["sft"]["eval_rows_hash"] == arms["rlvr"]["eval_rows_hash"]
    assert arms["sft"]["template_hash"] == arms["rlvr"]["template_hash"] == arms["sft"]["eval_template_hash"]
    for arm in arms.values():
        assert arm["budget"]["measure"] == "training_samples" and arm["budget"]["value"] == 24
        assert arm["budget"]["optimizer_steps"] == arm["budget"]["optimizer_steps_logged"] == 3
        results = json.loads(Path(arm["results_file"]).read_text())
        entry = next(e for e in results["results"] if (e["model"], e["task"]) == (arm["name"], "heldout"))
        assert (arm["accuracy"], arm["ci_low"], arm["ci_high"]) == (entry["accuracy"], entry["ci_low"],
                                                                    entry["ci_high"])
    difference = next(d for d in results["paired_differences"]
                      if (d["model"], d["reference"], d["task"]) == ("rlvr", "sft", "heldout"))
    assert on_disk["difference"]["delta"] == difference["delta"]
    # A fresh `rcl evaluate` of the exported models, from the study's own eval recipe, gives the same numbers.
    from rcl.eval.cli import cli_main

    cli_main(["--config", str(tmp_path / "study" / "seed-3" / "eval.yaml"), "--run.out_dir", str(tmp_path / "fresh")])
    fresh = json.loads((tmp_path / "fresh" / "results.json").read_text())
    for arm in arms.values():
        entry = next(e for e in fresh["results"] if (e["model"], e["task"]) == (arm["name"], "heldout"))
        assert (arm["accuracy"], arm["pass_at_k"]) == (entry["accuracy"], entry["pass_at_k"])
    seed = on_disk["seeds"][0]
    assert seed["weights"]["sft"]["top"][0]["relative_change"] > 0
    assert len(seed["curves"]["rlvr"]["kl"]) == 3 and len(seed["curves"]["sft"]["loss"]) == 3
    report = (tmp_path / "study" / "report.md").read_text()
    assert "RLVR − SFT" in report and "Weight differences" in report
    assert {p.name for p in (tmp_path / "study" / "seed-3").glob("*.png")} == {"accuracy.png", "learning_curves.png",
                                                                             "weights.png"}
