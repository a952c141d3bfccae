"""The human side of results.json: a rich table on the terminal and report.md. Both are built from the same rows."""

from __future__ import annotations

from collections.abc import Sequence


def fmt(value: float | None, low: float | None = None, high: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if low is not None and high is not None:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def results_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    level = int(round(100 * results["stats"]["ci_level"]))
    ks = results["stats"]["pass_k"]
    header = ["model", "task", "protocol", "n", f"accuracy [{level}% CI]", *[f"pass@{k}" for k in ks],
              "success rate", "mean tokens"]
    rows = []
    for e in results["results"]:
        rows.append([e["model"], e["task"], e["protocol"], str(e["n"]), fmt(e["accuracy"], e["ci_low"], e["ci_high"]),
                     *[fmt(e["pass_at_k"][str(k)]) for k in ks], fmt(e["success_rate"]),
                     fmt(e["mean_tokens"], digits=1)])
    return header, rows


def teaching_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["teacher", "student", "task", "student alone", "teacher + student", "delta (paired)", "NDR", "TES",
              "improved", "degraded", "teaching tokens"]
    rows = []
    for e in results["results"]:
        if e["protocol"] != "adaptive_teaching":
            continue
        rows.append([
            e["model"], e["student"], e["task"],
            fmt(e["baseline_accuracy"], e["baseline_ci_low"], e["baseline_ci_high"]),
            fmt(e["with_teaching_accuracy"], e["ci_low"], e["ci_high"]),
            fmt(e["delta"], e["delta_ci_low"], e["delta_ci_high"]), fmt(e["ndr"], e["ndr_ci_low"], e["ndr_ci_high"]),
            fmt(e["tes"], digits=2), fmt(e["improvement_rate"]), fmt(e["degradation_rate"]),
            fmt(e["teaching_tokens_mean"], digits=1),
        ])
    return header, rows


def difference_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["task", "protocol", "model", "minus", "delta (paired)", "problems"]
    rows = [[d["task"], d["protocol"], d["model"], d["reference"], fmt(d["delta"], d["ci_low"], d["ci_high"]),
             str(d["problems"])] for d in results["paired_differences"]]
    return header, rows


def aggregate_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "protocol", "tasks", "n", "accuracy", "mean score", "success rate"]
    rows = [[a["model"], a["protocol"], ", ".join(a["tasks"]), str(a["n"]), fmt(a["accuracy"]), fmt(a["mean_score"]),
             fmt(a["success_rate"])] for a in results["aggregates"]]
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


SECTIONS = (
    ("Results", results_rows),
    ("Teaching: student alone against teacher + student, on the same problems", teaching_rows),
    ("Paired differences between models", difference_rows),
    ("Aggregates (weighted by samples per task)", aggregate_rows),
)


def markdown_report(results: dict, command: str, plots: Sequence[str]) -> str:
    level = int(round(100 * results["stats"]["ci_level"]))
    parts = [
        "# Evaluation report",
        f"Command: `{command}`  \ngit: `{results['git_sha']}`"
        f"{' (with uncommitted changes)' if results['git_dirty'] else ''}"
        f"  \nScored samples: `{results['samples_file']}`",
        f"Intervals are {level}%: Jeffreys (Beta) intervals for accuracies, bootstrap over problems for pass@k, "
        "paired deltas and NDR.",
    ]
    for title, build in SECTIONS:
        header, rows = build(results)
        if rows:
            parts += [f"## {title}", markdown_table(header, rows)]
    if plots:
        parts.append("## Plots")
        parts += [f"![{p}]({p})" for p in plots]
    return "\n\n".join(parts) + "\n"


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a log file: no reason to squeeze intervals into 80 columns
        console = Console(width=200)
    for title, build in SECTIONS:
        header, rows = build(results)
        if not rows:
            continue
        table = Table(title=title)
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i < 3 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
