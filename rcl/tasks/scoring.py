"""Score saved completions with a task (`python -m rcl score`); `score_records` is the scoring core, for evaluation.

Input: JSON lines, each the task's row fields plus `completion` (math, gsm8k and arithmetic: `ground_truth`; other
tasks: their `fields`). `--completion-field` reads the completion from another field (`response`, `output`), and a
list of completions there (several samples of one problem) becomes one line per completion, numbered by
`sample_index`. Output: each input line with `reward`, `correct` and `details` (the verifier's: the extracted answer
or tests passed, the outcome class, any error) added. A malformed line stops the command with its file and line
number, and nothing is written (the output appears only once every line is scored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import yaml

from data_modules.sources import json_lines
from rcl.tasks.base import Environment, Score, Task, TaskArgs
from rcl.tasks.health import VerifierCounts, VerifierFailure, VerifierHealth


class ScoreInputError(ValueError):
    """A line of the input cannot be scored; the message names the file and line."""


def check_record(task: Task, record: object, where: str, field: str = "completion") -> list[dict]:
    """`record` as dicts with a string `completion` (from `field`: one, or one per string of a list) and the task's
    fields, or ScoreInputError naming `where`."""
    if not isinstance(record, dict):
        raise ScoreInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in task.fields if f not in record]
    if missing:
        raise ScoreInputError(f"{where}: task {task.name!r} needs the field(s) {', '.join(missing)}")
    value = record.get(field)
    if isinstance(value, str):
        return [{**record, "completion": value}]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        rest = {k: v for k, v in record.items() if k != field}
        return [{**rest, "completion": text, "sample_index": index} for index, text in enumerate(value)]
    raise ScoreInputError(f"{where}: needs a string {field!r}, or a non-empty list of strings")


def score_records(task: Task, records: Iterable[dict], health: VerifierHealth | None = None) -> list[dict]:
    """Each record with `reward`, `correct` and `details` added. Raises VerifierFailure when most checks failed."""
    records = list(records)
    batch = getattr(task, "score_batch", None)  # the code tasks run many completions at once on their sandbox pool
    completions = [record["completion"] for record in records]
    scores: list[Score] = (batch(completions, records) if batch
                           else [task.score(c, r) for c, r in zip(completions, records)])
    (health or VerifierHealth()).record(scores, f"the verifier of task {task.name!r}")
    return [{**record, "reward": s.reward, "correct": s.correct, "details": s.details}
            for record, s in zip(records, scores)]


def read_problems(task: Task, path: Path, field: str = "completion") -> list[list[dict]]:
    """The records of each input line (one problem: one record, or one per sample of a list)."""
    return [check_record(task, value, f"{path} line {number}", field)
            for number, value in json_lines(path, ScoreInputError)]


def pass_at_k_summary(scored_problems: list[list[dict]], ks: list[int]) -> str:
    """Unbiased pass@k over the problems with at least k samples, with its bootstrap interval over problems
    (`rcl.eval.stats.pass_at_k_estimate`, the evaluation's own)."""
    from rcl.eval.stats import DEFAULT_LEVEL, pass_at_k_estimate

    counts = [(len(problem), sum(bool(r["correct"]) for r in problem)) for problem in scored_problems]
    parts = []
    for k in ks:
        estimate = pass_at_k_estimate(counts, k)
        parts.append(f"pass@{k} n/a (no problem has {k} samples)" if estimate is None else
                     f"pass@{k} {estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}] over "
                     f"{estimate.problems} problems")
    return "; ".join(parts) + f" ({DEFAULT_LEVEL:.0%} bootstrap intervals)"


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write to a temporary file next to `path`, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summarize(task: Environment, scored: list[dict]) -> str:
    n = len(scored)
    correct = sum(r["correct"] for r in scored)
    mean = sum(r["reward"] for r in scored) / n if n else float("nan")
    outcomes = Counter(r["details"].get("outcome", "?") for r in scored)
    counts = VerifierCounts()
    counts.add(Score(r["reward"], r["correct"], r["details"]) for r in scored)
    return (f"scored {n} completions with task {task.name!r}: accuracy {correct / n if n else float('nan'):.3f} "
            f"({correct}/{n}), mean reward {mean:.3f}; outcomes "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            + f"; verifier errors {counts.errors}, timeouts {counts.timeouts}")


def task_args(name: str | None, config: str | None, kwargs: str | None) -> TaskArgs:
    """The task of `--config` (a recipe with a `task:` section, or the section alone), then `--task` and `--kwargs`
    over it."""
    section: dict = {}
    if config:
        content = yaml.safe_load(Path(config).read_text()) or {}
        section = content.get("task", content) if isinstance(content, dict) else {}
    if name:
        section = {**section, "name": name} if section.get("name") == name else {"name": name}
    if kwargs:
        section["kwargs"] = {**section.get("kwargs", {}), **yaml.safe_load(kwargs)}
    unknown = set(section) - {"name", "kwargs", "module"}
    if unknown:
        raise ScoreInputError(f"unknown task keys {sorted(unknown)}; a task section has name, kwargs and module")
    if "name" not in section:
        raise ScoreInputError("say which task: --task NAME, or --config with a task: section")
    return TaskArgs(**section)


def cli_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m rcl score", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--task", help="task name (arithmetic, math, gsm8k, ...); overrides the config's")
    parser.add_argument("--input", required=True, help="JSONL: the task's row fields plus `completion` per line")
    parser.add_argument("--output", required=True, help="JSONL written with reward, correct and details added")
    parser.add_argument("--config", help="YAML with a task: section (an RL recipe works) or the section itself")
    parser.add_argument("--kwargs", help="task keyword arguments as YAML, e.g. '{strict: true}'")
    parser.add_argument("--completion-field", default="completion",
                        help="the field holding the completion, or a list of completions (one output line each)")
    parser.add_argument("--pass-at", type=int, nargs="+", default=[], metavar="K",
                        help="also report unbiased pass@K per input line (its samples), e.g. --pass-at 1 5")
    args = parser.parse_args(argv)
    try:
        task = task_args(args.task, args.config, args.kwargs).build()
        if not isinstance(task, Task):
            raise ScoreInputError(f"task {task.name!r} is a multi-turn environment; rcl score scores single turns")
        if any(k < 1 for k in args.pass_at):
            raise ScoreInputError(f"--pass-at needs k >= 1, got {args.pass_at}")
        problems = read_problems(task, Path(args.input), args.completion_field)
        scored = score_records(task, [record for problem in problems for record in problem])
    except (ScoreInputError, VerifierFailure, ValueError, OSError) as err:
        raise SystemExit(f"rcl score: {err}") from None
    write_atomically(Path(args.output), (json.dumps(r, ensure_ascii=False) + "\n" for r in scored))
    print(summarize(task, scored) + f" -> {args.output}", file=sys.stderr)
    if args.pass_at:
        lines, at = [], 0
        for problem in problems:
            lines.append(scored[at : at + len(problem)])
            at += len(problem)
        print(pass_at_k_summary(lines, args.pass_at), file=sys.stderr)
