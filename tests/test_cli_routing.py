"""`python -m rcl`: the help explains the commands, and an SFT recipe routes to the LightningCLI."""

import subprocess
import sys
from pathlib import Path

import rcl.sft_cli
from rcl.cli import run_training

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_commands(repo_env):
    proc = subprocess.run([sys.executable, "-m", "rcl", "--help"], cwd=ROOT, env=repo_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("fit", "validate", "serve", "launch"):
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
