"""Every shipped eval recipe parses against `python -m rcl evaluate`'s own parser and pins every default."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from data_modules.teacher_student import TeacherStudentDataModule
from rcl.eval.args import EvalModel, EvalTask
from rcl.eval.cli import parse_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"
EVAL_RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if "models" in (yaml.safe_load(p.read_text()) or {}))


def test_the_eval_recipes_are_found():
    assert {p.name for p in EVAL_RECIPES} == {"eval_quickstart.yaml", "eval_gsm8k.yaml",
                                              "sft_vs_rlvr_quickstart_eval.yaml", "sft_vs_rlvr_gsm8k_eval.yaml"}


@pytest.mark.parametrize("recipe", EVAL_RECIPES, ids=lambda p: p.name)
def test_eval_recipe_parses_and_pins_every_default(recipe):
    kwargs = parse_recipe(["--config", str(recipe)], exit_on_error=False)
    resolved, written = kwargs["config"], yaml.safe_load(recipe.read_text())
    for group in ("generation", "teaching", "templates", "stats", "run"):
        missing = set(resolved[group]) - set(written[group])
        assert not missing, f"{recipe.name}: {group} leaves {sorted(missing)} to code defaults"
    model_keys = {f.name for f in fields(EvalModel)}
    for model in written["models"] + ([written["student"]] if written["student"] else []):
        assert set(model) == model_keys
        for group in ("model", "engine"):
            assert set(model[group]) == set(resolved["models"][0][group]), f"{recipe.name}: {group}"
    for task in written["tasks"]:
        assert set(task) == {f.name for f in fields(EvalTask)}
    assert all(isinstance(t.data, TeacherStudentDataModule) for t in kwargs["tasks"])


def test_quickstart_recipe_samples_enough_for_pass_at_4_on_the_rl_held_out_rows():
    kwargs = parse_recipe(["--config", str(CONFIGS / "eval_quickstart.yaml")], exit_on_error=False)
    (task,) = kwargs["tasks"]
    assert task.samples >= 4 and kwargs["stats"].pass_k == [1, 2, 4]
    assert kwargs["generation"].temperature == 1.0 and kwargs["generation"].student_temperature == 1.0
    assert kwargs["run"].out_dir == "runs/eval_quickstart"
    rl = yaml.safe_load((CONFIGS / "quickstart_rcl.yaml").read_text())
    written = yaml.safe_load((CONFIGS / "eval_quickstart.yaml").read_text())["tasks"][0]
    assert written["data"] == rl["data"]
    assert {k: written[k] for k in ("name", "kwargs", "module")} == rl["task"]
    assert vars(kwargs["templates"]) == rl["templates"]
    protocols = {m.name: m.protocols for m in kwargs["models"]}
    assert protocols == {"student_sft": ["direct"], "teacher_sft": ["adaptive_teaching"],
                         "teacher_rl": ["adaptive_teaching"]}


def test_production_recipe_generates_through_servers():
    kwargs = parse_recipe(["--config", str(CONFIGS / "eval_gsm8k.yaml")], exit_on_error=False)
    assert all(m.engine.backend == "server" and m.engine.api == "openai" and m.engine.urls for m in kwargs["models"])
    assert kwargs["tasks"][0].name == "gsm8k" and kwargs["stats"].pass_k == [1, 2, 4, 8]


def test_production_recipe_prompts_as_rlvr_trains():
    kwargs = parse_recipe(["--config", str(CONFIGS / "eval_gsm8k.yaml")], exit_on_error=False)
    rl = yaml.safe_load((CONFIGS / "rlvr_gsm8k.yaml").read_text())
    assert vars(kwargs["templates"]) == rl["templates"]
