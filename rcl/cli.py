"""Training entry: routes a recipe to the Lightning SFT CLI or to the Fabric RL loop.

A recipe is an RL recipe when one of its `--config` files has a top-level `grpo:` section; everything else is a
LightningCLI recipe (model + data + trainer). Both accept the same flags: several `--config` files merged in order,
dotted overrides such as `--trainer.strategy ddp`, and `--print_config`.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def config_paths(argv: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def is_rl_recipe(argv: list[str]) -> bool:
    for path in config_paths(argv):
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"rcl: config file not found: {path}")
        content = yaml.safe_load(p.read_text()) or {}
        if isinstance(content, dict) and "grpo" in content:
            return True
    return False


def run_training(command: str, argv: list[str]) -> None:
    if is_rl_recipe(argv):
        from rcl.rl.loop import cli_main

        cli_main(command, argv)
    else:
        from rcl.sft_cli import cli_main

        cli_main(command, argv)
