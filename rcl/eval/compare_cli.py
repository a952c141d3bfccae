"""`python -m rcl evaluate compare results_a.json results_b.json ...`: systems of several evaluations side by side.

A system is one (model, protocol) of a results file; when two files name the same one, each is prefixed with its
file's folder name (and the file's position when folders repeat too). Prints and (with --out_dir) writes
compare.json, compare.md and pareto.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from rcl.eval.compare import (
    TaskScore,
    common_tasks,
    delta_interval,
    dominance_pairs,
    pareto_frontier,
    token_frontier,
)
from rcl.eval.generate import EvalError
from rcl.eval.plots import system_name
from rcl.eval.report import fmt, markdown_table
from rcl.eval.results import SCHEMA_VERSION, clean
from rcl.eval.stats import weighted_mean


def load_results(path: Path) -> dict:
    if not path.is_file():
        raise EvalError(f"{path}: no such results file")
    doc = json.loads(path.read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise EvalError(f"{path}: schema_version {doc.get('schema_version')!r}, this rcl reads {SCHEMA_VERSION}")
    return doc


def systems_of(paths: list[Path]) -> dict[str, dict[str, TaskScore]]:
    folders = [p.resolve().parent.name for p in paths]
    labels = [f if folders.count(f) == 1 else f"{f}#{i + 1}" for i, f in enumerate(folders)]
    named = [(system_name(e), label, e) for path, label in zip(paths, labels) for e in load_results(path)["results"]]
    names = [n for n, _, _ in named]
    systems: dict[str, dict[str, TaskScore]] = {}
    for name, label, e in named:
        key = f"{label}: {name}" if names.count(name) > 1 else name
        systems.setdefault(key, {})[e["task"]] = TaskScore(e["accuracy"], e["ci_low"], e["ci_high"], e["n"],
                                                           e["mean_tokens"])
    return systems


def compare(paths: list[Path], min_samples: int = 1, ci_level: float = 0.8, seed: int = 0) -> dict:
    systems = systems_of(paths)
    names = list(systems)
    reference = names[0]
    deltas = []
    for name in names[1:]:
        for task in common_tasks(systems[name], systems[reference], min_samples):
            d, low, high = delta_interval(systems[name][task], systems[reference][task], ci_level, seed=seed)
            deltas.append({"system": name, "minus": reference, "task": task, "delta": d, "ci_low": low,
                           "ci_high": high})
    points = {}
    for name, table in systems.items():
        kept = [s for s in table.values() if s.n >= min_samples]
        points[name] = (weighted_mean([s.accuracy for s in kept], [s.n for s in kept]),
                        weighted_mean([s.mean_tokens for s in kept], [s.n for s in kept]))
    return clean({
        "files": [str(p) for p in paths],
        "min_samples": min_samples,
        "systems": {n: {t: vars(s) for t, s in table.items()} for n, table in systems.items()},
        "deltas": deltas,
        "dominates": [list(p) for p in dominance_pairs(systems, min_samples)],
        "dominates_ci_aware": [list(p) for p in dominance_pairs(systems, min_samples, ci_aware=True)],
        "pareto_frontier": pareto_frontier(systems, min_samples),
        "pareto_frontier_ci_aware": pareto_frontier(systems, min_samples, ci_aware=True),
        "token_points": {n: list(p) for n, p in points.items()},
        "token_frontier": token_frontier(points),
    })


def markdown(result: dict) -> str:
    tasks = sorted({t for table in result["systems"].values() for t in table})
    header = ["system", *tasks]
    rows = [[name, *[fmt(table[t]["accuracy"], table[t]["ci_low"], table[t]["ci_high"]) + f" (n={table[t]['n']})"
                     if t in table else "–" for t in tasks]] for name, table in result["systems"].items()]
    parts = ["# Comparison", "Files: " + ", ".join(f"`{f}`" for f in result["files"]),
             f"Tasks with fewer than {result['min_samples']} samples are left out of every comparison.",
             "## Accuracy per task", markdown_table(header, rows)]
    if result["deltas"]:
        parts += ["## Deltas against the first system (independent Jeffreys posteriors)",
                  markdown_table(["system", "minus", "task", "delta"],
                                 [[d["system"], d["minus"], d["task"], fmt(d["delta"], d["ci_low"], d["ci_high"])]
                                  for d in result["deltas"]])]
    dominance = [f"- {a} dominates {b}" for a, b in result["dominates"]] or ["- no system dominates another"]
    ci_dominance = [f"- {a} dominates {b}" for a, b in result["dominates_ci_aware"]] or ["- none"]
    parts += ["## Pareto dominance (>= on every common task, > on one)", "\n".join(dominance),
              "Frontier: " + ", ".join(result["pareto_frontier"]),
              "## CI-aware dominance (a task counts only when the intervals do not overlap)", "\n".join(ci_dominance),
              "Frontier: " + ", ".join(result["pareto_frontier_ci_aware"]),
              "## Accuracy against tokens", "Frontier, by tokens: " + ", ".join(result["token_frontier"])]
    return "\n\n".join(parts) + "\n"


def cli_main(argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m rcl evaluate compare", description=__doc__.splitlines()[0],
                            allow_abbrev=False)
    parser.add_argument("results", nargs="+", type=str, help="results.json files of `python -m rcl evaluate`.")
    parser.add_argument("--min_samples", type=int, default=1, help="Leave out tasks with fewer samples.")
    parser.add_argument("--ci_level", type=float, default=0.8, help="Level of the delta intervals.")
    parser.add_argument("--out_dir", type=str | None, default=None,
                        help="Write compare.json, compare.md and pareto.png here.")
    args = parser.parse_args(argv)
    try:
        result = compare([Path(p) for p in args.results], args.min_samples, args.ci_level)
    except EvalError as err:
        raise SystemExit(f"rcl evaluate compare: {err}") from None
    from rich.console import Console
    from rich.markdown import Markdown

    text = markdown(result)
    Console().print(Markdown(text))
    if args.out_dir:
        from rcl.eval.plots import pareto_plot

        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
        points = {n: tuple(p) for n, p in result["token_points"].items() if None not in p}
        pareto_plot(points, out / "pareto.png", "accuracy against tokens, across evaluations")
        (out / "compare.md").write_text(text + "\n![pareto](pareto.png)\n")
        print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}, {out / 'pareto.png'}")
