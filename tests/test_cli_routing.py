"""`python -m rcl`: the help explains the commands, an SFT recipe routes to the LightningCLI, every parser refuses
abbreviated flags, bad values are one line that names the fix, and help after `--config` shows the recipe's values."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import rcl.sft_cli
from rcl.cli import run_training
from rcl.rl.loop import parse_recipe
from rcl.sft_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_commands(repo_env):
    proc = subprocess.run([sys.executable, "-m", "rcl", "--help"], cwd=ROOT, env=repo_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("fit", "validate", "score", "evaluate", "serve", "launch"):
        assert f"  {command}" in proc.stdout


def test_sft_recipe_routes_to_the_lightning_cli(monkeypatch):
    calls = []
    monkeypatch.setattr(rcl.sft_cli, "cli_main", lambda command, argv: calls.append((command, argv)))
    argv = ["--config", str(ROOT / "lightning_configs" / "quickstart_sft.yaml"), "--trainer.max_steps", "1"]
    run_training("fit", argv)
    assert calls == [("fit", argv)]


def test_sft_print_config_through_python_m_rcl(repo_env):
    proc = subprocess.run([sys.executable, "-m", "rcl", "fit", "--config", "lightning_configs/quickstart_sft.yaml",
                           "--print_config"], cwd=ROOT, env=repo_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path: rcl.sft.SFTModule" in proc.stdout and "seed_everything: 42" in proc.stdout


RL_RECIPE = str(ROOT / "lightning_configs" / "quickstart_rcl.yaml")
SFT_RECIPE = str(ROOT / "lightning_configs" / "quickstart_sft.yaml")


@pytest.mark.parametrize("flag, full", [("--grpo.num_generation", "--grpo.num_generations"),
                                        ("--trainer.max_step", "--trainer.max_steps")])
def test_rl_refuses_an_abbreviated_flag_and_names_the_full_one(flag, full):
    with pytest.raises(argparse.ArgumentError) as err:
        parse_recipe("fit", ["--config", RL_RECIPE, flag, "4"], exit_on_error=False)
    assert str(err.value) == f"unrecognized arguments: {flag} 4 (flags must be spelled in full; did you mean {full}?)"


def test_sft_refuses_an_abbreviated_flag_and_names_the_full_one():
    with pytest.raises(argparse.ArgumentError, match=r"unrecognized arguments: --trainer\.max_step 3 .*did you mean "
                                                     r"--trainer\.max_steps\?"):
        build_cli("fit", ["--config", SFT_RECIPE, "--trainer.max_step", "3"])


def test_serve_and_launch_refuse_abbreviated_flags(capsys):
    from rcl.launch import build_parser as launch_parser
    from rcl.launch import cli_main as launch_main
    from rcl.serving.server import build_parser as serve_parser

    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--model", "tiny-1m", "--eng", "hf"])
    assert "unrecognized arguments: --eng" in capsys.readouterr().err
    args, overrides = launch_parser().parse_known_args(["--config", RL_RECIPE, "--teacher-gpus", "cpu",
                                                        "--train-gpus", "none", "--dry"])
    assert not args.dry_run and overrides == ["--dry"]
    with pytest.raises(SystemExit, match=r"does not parse: unrecognized arguments: --dry "):
        launch_main(["--config", RL_RECIPE, "--teacher-gpus", "cpu", "--train-gpus", "none", "--engine", "hf",
                     "--dry"])


@pytest.mark.parametrize("value, expected", [
    ("{solution:answer}", "data.init_args.columns: expected one of dict[str, str], null, got '{solution:answer}' "
                          "(YAML needs a space after each colon: {solution: answer})"),
    ("[a]", "data.init_args.columns: expected one of dict[str, str], null, got \"['a']\""),
])
def test_a_bad_value_is_one_line_naming_the_key_and_the_fix(value, expected):
    with pytest.raises(argparse.ArgumentError) as rl:
        parse_recipe("fit", ["--config", RL_RECIPE, "--data.init_args.columns", value], exit_on_error=False)
    assert str(rl.value) == expected
    with pytest.raises(argparse.ArgumentError) as sft:
        build_cli("fit", ["--config", SFT_RECIPE, "--data.init_args.columns", value])
    assert str(sft.value) == expected


def option_help(help_text: str, flag: str) -> str:
    """The help paragraph of one flag, whitespace collapsed."""
    start = help_text.index(f"\n  {flag} ")
    end = help_text.index("\n  --", start + 1)
    return " ".join(help_text[start:end].split())


def test_rl_help_after_config_shows_the_recipes_values(repo_env):
    proc = subprocess.run([sys.executable, "-m", "rcl", "fit", "--config", "lightning_configs/quickstart_rcl.yaml",
                           "--help"], cwd=ROOT, env=repo_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: python -m rcl fit ")
    assert "(type: int, default: 200)" in option_help(proc.stdout, "--trainer.max_steps"), "the recipe's, not 100"
    assert "default: 5e-05" in option_help(proc.stdout, "--optimizer.learning_rate")
    assert "default: atlas_rl)" in option_help(proc.stdout, "--data.init_args.schema"), "data keys are listed too"


def test_sft_help_after_config_shows_the_recipes_values_under_its_program_name(repo_env):
    proc = subprocess.run([sys.executable, "-m", "rcl", "fit", "--config", "lightning_configs/quickstart_sft.yaml",
                           "--help"], cwd=ROOT, env=repo_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: python -m rcl fit ")
    assert "default: 250)" in option_help(proc.stdout, "--trainer.max_steps")
    assert "default: 0.003)" in option_help(proc.stdout, "--model.init_args.optimizer.learning_rate")
    assert "default: 200)" in option_help(proc.stdout, "--data.init_args.val_size"), "data keys are listed too"
    assert "intended to run from within Python" not in proc.stderr
