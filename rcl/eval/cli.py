"""`python -m rcl evaluate --config <eval recipe>` and `python -m rcl evaluate compare results.json ...`."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from rcl.eval.args import EvalModel, EvalRun, EvalStats, EvalTask, EvalTeaching
from rcl.eval.generate import EvalError, iter_generations, plan, resolve_model_path, run_jobs, sha256_json
from rcl.prompts import PromptTemplates
from rcl.rl.args import GenerationArgs
from rcl.tasks.health import VerifierFailure

SAMPLES_FILE = "samples.jsonl"


def evaluate(
    models: list[EvalModel],
    tasks: list[EvalTask],
    student: EvalModel | None = None,
    generation: GenerationArgs = GenerationArgs(),
    teaching: EvalTeaching = EvalTeaching(),
    templates: PromptTemplates = PromptTemplates(),
    stats: EvalStats = EvalStats(),
    run: EvalRun = EvalRun(),
    config: dict | None = None,
    command: str = "",
) -> dict | None:
    """Evaluate models on tasks, with intervals, pass@k and paired teaching effects.

    Generates completions (resumably), scores them, and writes results.json, samples.jsonl, report.md and plots
    under run.out_dir.

    Args:
        models: The evaluated models, each with its protocols.
        tasks: The tasks, each with its rows, samples per problem and seed.
        student: The student that adaptive_teaching teachers teach (also scored alone on the same problems).
        generation: Sampling of the evaluated models (`max_completion_length`: their answer, or their teaching) and
            of the student (the RL recipes' keys).
        teaching: The adaptive_teaching protocol's probe and missing-tag handling.
        templates: Prompts of every role (the RL recipes' templates, so a model is sampled as it was trained).
        stats: Interval level, pass@k and the bootstrap.
        run: Output folder, phase, seed and device.

    Returns the results (None for the generate phase alone).
    """
    check(models, tasks, student, stats, run)
    jobs = plan(models, student, tasks, generation, teaching, templates, run)
    out_dir = Path(run.out_dir)
    if run.phase in ("all", "generate"):
        generate(jobs, student, templates, generation, teaching, run)
        if run.phase == "generate":
            return None
    from rcl.eval.results import build_results
    from rcl.eval.score import score_lines, write_records

    records = []
    for job, lines in iter_generations(jobs):
        records += score_lines(job.spec.build(), lines)
    write_records(out_dir / SAMPLES_FILE, records)
    rows_sha = {job.spec.key: job.meta["rows_sha256"] for job in jobs}
    results = build_results(records, stats, config or {}, sha256_json(asdict(templates)), rows_sha, SAMPLES_FILE)
    return write_outputs(results, out_dir, run.plots, command)


def write_outputs(results: dict, out_dir: Path, plots: bool, command: str) -> dict:
    from rcl.eval.report import markdown_report, print_tables

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    written: list[str] = []
    if plots:
        from rcl.eval.plots import write_plots

        written = write_plots(results, out_dir)
    (out_dir / "report.md").write_text(markdown_report(results, command, written))
    print_tables(results)
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'}" + "".join(f", {p}" for p in written))
    return results


def check(models: list[EvalModel], tasks: list[EvalTask], student: EvalModel | None, stats: EvalStats,
          run: EvalRun) -> None:
    if not models or not tasks:
        raise EvalError("give at least one model and one task")
    for label, names in (("model", [m.name for m in models]), ("task", [t.key for t in tasks])):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise EvalError(f"{label} names must be unique; repeated: {', '.join(repeated)}")
    if any(m.engine.backend == "server" and not m.engine.urls for m in [*models, *([student] if student else [])]):
        raise EvalError("a model with engine.backend server needs engine.urls")
    for t in tasks:
        if t.samples < 1:
            raise EvalError(f"task {t.key!r}: samples must be >= 1")
        too_big = [k for k in stats.pass_k if k > t.samples]
        if too_big:
            raise EvalError(f"task {t.key!r} has {t.samples} samples per problem, too few for pass@"
                            f"{', pass@'.join(map(str, too_big))}")
    if any(k < 1 for k in stats.pass_k) or not 0 < stats.ci_level < 1:
        raise EvalError("pass_k values must be >= 1 and ci_level in (0, 1)")
    if run.rows_per_chunk < 1:
        raise EvalError("run.rows_per_chunk must be >= 1")


def load_engine(model: EvalModel, device: str) -> Any:
    from rcl.rl.loop import build_engine, load_causal_lm, load_tokenizer

    args = replace(model.model, model_name_or_path=resolve_model_path(model.model.model_name_or_path))
    tokenizer = load_tokenizer(args)
    if model.engine.backend == "server":
        return build_engine(model.engine, None, tokenizer)
    return build_engine(model.engine, load_causal_lm(args, trainable=False).to(device), tokenizer)


def generate(jobs, student, templates, generation, teaching, run: EvalRun) -> int:
    total = sum(job.missing_samples for job in jobs)
    done = sum(sum(job.chunk_sizes.values()) for job in jobs) - total
    if total == 0:
        print(f"generate: all {done} samples already written")
        return 0
    loader = lambda m: load_engine(m, run.device)  # noqa: E731
    if not run.progress:
        return run_jobs(jobs, student, templates, generation, teaching, run, loader)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns = (TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("generate", total=total)
        if done:
            progress.console.print(f"resuming: {done} samples already written, {total} to generate")
        return run_jobs(jobs, student, templates, generation, teaching, run, loader, lambda n: progress.advance(bar, n))


def build_parser(argv: list[str] = ()):
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    from rcl.cli import help_defaults

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="python -m rcl evaluate", description=evaluate.__doc__.splitlines()[0],
                            allow_abbrev=False, exit_on_error=False, **help_defaults(list(argv)))
    parser.add_argument("--config", action=ActionConfigFile, help="Eval recipe YAML (repeat to merge in order).")
    parser.add_function_arguments(evaluate, skip={"config", "command"})
    return parser


def parse_recipe(argv: list[str], exit_on_error: bool = True) -> dict[str, Any]:
    """`evaluate`'s arguments from an eval recipe's command line, with `config` the resolved recipe. Flags must be
    spelled in full; a bad recipe is one line (raised as `argparse.ArgumentError` with `exit_on_error=False`)."""
    import argparse

    from rcl.cli import refuse_parse_error

    parser = build_parser(argv)
    try:
        namespace = parser.parse_args(argv)
        resolved = yaml.safe_load(parser.dump(namespace, skip_none=False))
        init = parser.instantiate(namespace)
    except argparse.ArgumentError as err:
        refuse_parse_error(parser, err, exit_on_error, "rcl evaluate")
    resolved.pop("config", None)
    kwargs = {k: v for k, v in vars(init).items() if k not in ("config", "__path__")}
    return {**kwargs, "config": resolved}


def cli_main(argv: list[str]) -> None:
    if argv and argv[0] == "compare":
        from rcl.eval.compare_cli import cli_main as compare_main

        compare_main(argv[1:])
        return
    kwargs = parse_recipe(argv)
    try:
        evaluate(**kwargs, command=shlex.join(["python", "-m", "rcl", "evaluate", *argv]))
    except (EvalError, VerifierFailure) as err:
        raise SystemExit(f"rcl evaluate: {err}") from None


if __name__ == "__main__":
    cli_main(sys.argv[1:])
