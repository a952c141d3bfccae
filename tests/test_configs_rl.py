"""Every shipped RL recipe parses against the real entry point; strategy flags override it.

(The fragments in lightning_configs/strategies/ configure Lightning Trainer strategy objects for SFT recipes; the RL
loop takes Fabric's strategy names, e.g. `--trainer.strategy deepspeed_stage_3`.)"""

import json
from pathlib import Path

import pytest
import yaml

from rcl.__main__ import main
from rcl.cli import is_rl_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"
RL_RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if "grpo" in (yaml.safe_load(p.read_text()) or {}))


def test_recipes_route_by_their_grpo_section():
    assert len(RL_RECIPES) >= 3
    assert all(is_rl_recipe(["--config", str(p)]) for p in RL_RECIPES)
    sft = [p for p in CONFIGS.glob("*.yaml") if p not in RL_RECIPES]
    assert sft and not any(is_rl_recipe(["--config", str(p)]) for p in sft)
    assert not is_rl_recipe(["--config", str(CONFIGS / "quickstart_sft.yaml")])


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as stop:
        main(["fit", *args, "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("recipe", RL_RECIPES, ids=lambda p: p.name)
def test_rl_recipe_pins_every_default(recipe, capsys):
    resolved = print_config(capsys, "--config", str(recipe))
    written = yaml.safe_load(recipe.read_text())
    for group in ("task", "trainer", "teacher", "student", "grpo", "generation", "reward", "optimizer", "eval",
                  "engines", "logging"):
        missing = set(resolved[group]) - set(written.get(group, {}))
        assert not missing, f"{recipe.name}: {group} leaves {sorted(missing)} to code defaults"
    assert resolved["data"]["class_path"] == "data_modules.TeacherStudentDataModule"


@pytest.mark.parametrize("flag", ["ddp", "fsdp", "deepspeed_stage_3", "deepspeed_stage_3_offload"])
def test_strategy_flag_overrides_the_recipe(flag, capsys):
    resolved = print_config(capsys, "--config", str(CONFIGS / "teacher_rcl.yaml"), "--trainer.strategy", flag,
                            "--trainer.devices", "8", "--optimizer.learning_rate", "2e-6")
    assert (resolved["trainer"]["strategy"], resolved["trainer"]["devices"]) == (flag, 8)
    assert resolved["optimizer"]["learning_rate"] == 2e-6


def test_rl_help_shows_attribute_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "quickstart_rcl.yaml"), "--help"])
    out = capsys.readouterr().out
    assert "k: student solutions without teaching per prompt" in out
    assert "--grpo.loss_type" in out


def test_unknown_rl_key_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "quickstart_rcl.yaml"), "--grpo.no_such_key", "1"])
    assert "no_such_key" in capsys.readouterr().err


def test_rl_recipes_sample_in_the_format_their_sft_recipes_trained():
    def sft_templates(name):
        return yaml.safe_load((CONFIGS / name).read_text())["data"]["init_args"]["templates"]

    assert sft_templates("quickstart_sft.yaml") == sft_templates("quickstart_student_sft.yaml")
    for rl in ("quickstart_rcl.yaml", "quickstart_direct.yaml"):
        recipe = yaml.safe_load((CONFIGS / rl).read_text())
        assert recipe["templates"] == sft_templates("quickstart_sft.yaml"), rl
        assert recipe["data"]["init_args"]["synthetic_size"] == 6000
    assert yaml.safe_load((CONFIGS / "teacher_rcl.yaml").read_text())["templates"] == sft_templates("teacher_sft.yaml")
    gsm8k = yaml.safe_load((CONFIGS / "quickstart_gsm8k.yaml").read_text())
    assert gsm8k["templates"] == sft_templates("quickstart_gsm8k_sft.yaml")
    sft_data = yaml.safe_load((CONFIGS / "quickstart_gsm8k_sft.yaml").read_text())["data"]["init_args"]
    for key in ("dataset", "synthetic_size", "synthetic_seed", "synthetic_kind", "val_size", "seed"):
        assert gsm8k["data"]["init_args"][key] == sft_data[key], key


def test_sixty_generic_rows_start_the_rl_quickstart_in_one_command(tmp_path, models_dir):
    from test_configs_sft import write_generic_rows

    from rcl.rl.loop import cli_main

    rows = write_generic_rows(tmp_path / "mine.jsonl", 60)
    out = tmp_path / "run"
    cli_main("fit", [
        "--config", str(CONFIGS / "quickstart_rcl.yaml"), "--config", str(CONFIGS / "data" / "generic_rows.yaml"),
        "--data.init_args.dataset", str(rows), "--trainer.out_dir", str(out),
        # only to keep the test short:
        "--teacher.model_name_or_path", "tiny-1m", "--student.model_name_or_path", "tiny-1m",
        "--trainer.max_steps", "1", "--grpo.prompts_per_step", "2", "--grpo.num_generations", "2",
        "--generation.max_completion_length", "4", "--generation.student_max_tokens", "4", "--eval.num_prompts", "2",
        "--trainer.loggers", "[csv]"])
    steps = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "reward" in r] == [1]



@pytest.mark.parametrize("recipe", RL_RECIPES, ids=lambda p: p.name)
def test_every_rl_recipe_goes_through_a_task_that_builds(recipe, capsys):
    from rcl.tasks import Environment, TaskArgs

    task = print_config(capsys, "--config", str(recipe))["task"]
    assert isinstance(TaskArgs(**task).build(), Environment)  # a single-turn Task, or a multi-turn environment


def test_rlvr_gsm8k_pins_the_studys_setup(capsys):
    resolved = print_config(capsys, "--config", str(CONFIGS / "rlvr_gsm8k.yaml"))
    data = resolved["data"]["init_args"]
    assert (data["dataset"], data["schema"], resolved["teacher"]["model_name_or_path"]) == (
        "ai2-adapt-dev/rlvr_gsm8k_zs", "messages_rl", "meta-llama/Llama-3.1-8B")
    assert resolved["task"] == {"name": "gsm8k", "module": None, "kwargs": {
        "strict": False, "format": "think_answer", "format_mode": "gate", "timeout_s": 5.0, "instruction": None}}
    grpo, gen = resolved["grpo"], resolved["generation"]
    assert (grpo["protocol"], grpo["num_generations"], grpo["beta"]) == ("direct", 4, 0.01)
    assert (gen["temperature"], gen["max_completion_length"], gen["stop"]) == (0.7, 1024, ["</answer>"])
    assert resolved["optimizer"]["learning_rate"] == 3e-7 and resolved["reward"]["functions"] == {"correctness": 10.0}
    assert (resolved["trainer"]["strategy"], resolved["trainer"]["seed"]) == ("deepspeed_stage_2", 42)
    episodes = resolved["trainer"]["max_steps"] * grpo["prompts_per_step"] * grpo["num_generations"]
    assert abs(episodes - 10_000) < grpo["prompts_per_step"] * grpo["num_generations"]
