"""`python -m experiments.sft_vs_rlvr --config <study recipe> [--seeds 1 2 3]`."""

from __future__ import annotations

import sys

from experiments.sft_vs_rlvr.config import Study


def build_parser(argv: list[str] = ()):
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    from rcl.cli import help_defaults

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="python -m experiments.sft_vs_rlvr", allow_abbrev=False, exit_on_error=False,
                            description="SFT vs RLVR from one base at a matched budget, with one report.",
                            **help_defaults(list(argv)))
    parser.add_argument("--config", action=ActionConfigFile, help="Study recipe YAML.")
    parser.add_class_arguments(Study, as_positional=False)
    return parser


def parse_study(argv: list[str]) -> Study:
    import argparse

    from rcl.cli import refuse_parse_error

    argv = list(argv)
    seeds = None
    if "--seeds" in argv:  # also as a space-separated list, --seeds 1 2 3
        i = argv.index("--seeds")
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        seeds = [int(s) for s in argv[i + 1 : j]]
        argv = argv[:i] + argv[j:]
    parser = build_parser(argv)
    try:
        namespace = parser.parse_args(argv)
        init = parser.instantiate_classes(namespace)
    except argparse.ArgumentError as err:
        refuse_parse_error(parser, err, True, "sft_vs_rlvr")
    study = Study(**{k: v for k, v in vars(init).items() if k not in ("config", "__path__")})
    if seeds:
        study.seeds = seeds
    return study


def main(argv: list[str] | None = None) -> None:
    from experiments.sft_vs_rlvr.study import StudyError, run_study

    study = parse_study(sys.argv[1:] if argv is None else argv)
    try:
        run_study(study)
    except StudyError as err:
        raise SystemExit(f"sft_vs_rlvr: {err}") from None


if __name__ == "__main__":
    main()
