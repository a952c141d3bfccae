"""Training entry: routes a recipe to the Lightning SFT CLI or to the Fabric RL loop.

A recipe is an RL recipe when one of its `--config` files has a top-level `grpo:` section; everything else is a
LightningCLI recipe (model + data + trainer). Both accept the same flags: several `--config` files merged in order,
dotted overrides such as `--trainer.strategy ddp`, and `--print_config`.
"""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path
from typing import Any, Iterable, NoReturn

import yaml


def config_paths(argv: list[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def help_defaults(argv: list[str]) -> dict:
    """Parser keywords that make `--help` after `--config` show the recipe's values as the defaults (jsonargparse
    shows the values of its `default_config_files`)."""
    if not {"-h", "--help"} & set(argv):
        return {}
    return {"default_config_files": config_paths(argv)}


def recipe_values(argv: list[str]) -> dict:
    """The `--config` files of a command line merged in order (nested mappings merge key by key)."""

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    merged: dict = {}
    for path in config_paths(argv):
        content = yaml.safe_load(Path(path).read_text()) or {}
        merged = merge(merged, content) if isinstance(content, dict) else merged
    return merged


def show_class_keys_in_help(parser: Any, argv: list[str], classes: dict[str, type]) -> None:
    """Append the `init_args` keys of subclass-mode groups (`data`, `model`) to `parser`'s help, with the recipe's
    values as defaults; jsonargparse otherwise shows them only through `--data.help CLASS`."""
    if not {"-h", "--help"} & set(argv):
        return
    from jsonargparse import ArgumentParser

    values = recipe_values(argv)
    sections = []
    for key, default_class in classes.items():
        section = values.get(key) if isinstance(values.get(key), dict) else {}
        cls = default_class
        if isinstance(section.get("class_path"), str):
            module, _, name = section["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module), name, default_class)
        keys = ArgumentParser(prog=parser.prog, add_help=False)
        keys.add_class_arguments(cls, f"{key}.init_args", fail_untyped=False)
        init_args = section.get("init_args") or {}
        known = {d for a in keys._actions for d in [a.dest]}
        keys.set_defaults({f"{key}.init_args.{k}": v for k, v in init_args.items() if f"{key}.init_args.{k}" in known})
        text = keys.format_help()
        sections.append(text[text.index("\n\n") + 2:].rstrip())  # without its usage block
    original = parser.format_help
    parser.format_help = lambda *args: original(*args).rstrip() + "\n\n" + "\n\n".join(sections) + "\n"


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


YAML_COLON = re.compile(r"(?<=[^\s:]):(?=[^\s/])")
"""`key:value` inside a flow mapping, which YAML reads as one string (a colon needs a space after it)."""


def explain_parse_error(message: str, options: Iterable[str] = ()) -> str:
    """One line for a jsonargparse error: the dotted key, what it expects, what it got, and the likely fix.

    jsonargparse nests its messages (a Union's subtypes, a class_path's keys) over a dozen lines behind an 80-line
    usage; `options` (the parser's flags) lets an unknown flag be answered with the closest known one.
    """
    unknown = re.match(r"unrecognized arguments: (\S+)", message, flags=re.IGNORECASE)
    if unknown:
        flag = unknown.group(1).split("=", 1)[0]
        close = difflib.get_close_matches(flag, [o for o in options if o.startswith("--")], n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else "; `--help` after `--config` lists every key"
        return f"{message.strip()} (flags must be spelled in full{hint})"
    keys: list[str] = []
    lines = [line.strip().removeprefix("- ") for line in message.strip().splitlines()]
    innermost = 0
    for i, line in enumerate(lines):
        key = re.match(r'Parser key "([^"]+)"', line)
        if key:
            keys.append(key.group(1))
            innermost = i + 1
        elif line.startswith("Problem with given class_path"):
            keys.append("init_args")
    detail = lines[innermost:] or lines
    reason = detail[0]
    if reason.startswith("Does not validate against any of the Union subtypes"):
        subtypes = next((line for line in detail if line.startswith("Subtypes:")), "")
        reason = "expected one of " + subtypes.removeprefix("Subtypes:").strip(" []")
        reason = reason.replace("<class 'NoneType'>", "null")
    given = next((m.group(1) for line in detail if (m := re.search(r"(?:Given|Got) value: (.*)", line))), None)
    reason = re.sub(r"\.? ?Got value: .*", "", reason).replace("<class '", "").replace("'>", "")
    out = f"{'.'.join(keys) or 'config'}: {reason}"
    if given is not None:
        out += f", got {given!r}"
        spaced = YAML_COLON.sub(": ", given)
        if given.startswith(("{", "[")) and spaced != given:
            out += f" (YAML needs a space after each colon: {spaced})"
    return out


def refuse_parse_error(parser: Any, err: Exception, exit_on_error: bool, prefix: str = "rcl") -> NoReturn:
    """A jsonargparse failure of `parser` as one line: printed with exit status 2, or raised as
    `argparse.ArgumentError` when the caller handles it (`exit_on_error=False`)."""
    import argparse
    import sys

    options = [flag for action in parser._actions for flag in action.option_strings]
    message = explain_parse_error(str(err), options)
    if exit_on_error:
        print(f"{prefix}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    raise argparse.ArgumentError(None, message) from None
