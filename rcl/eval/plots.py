"""PNG plots of results.json: per-task accuracy with interval whiskers, pass@k curves, teaching bars and the
accuracy-against-tokens Pareto frontier."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rcl.eval.compare import token_frontier


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def system_name(entry: Mapping) -> str:
    return f"{entry['model']} ({entry['protocol'].replace('_', ' ')})"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def interval_bars(ax, xs, lows, highs, color=None, capsize: float = 4) -> None:
    """Whiskers from each low to each high. Drawn around their midpoints, not the estimates: at 0 or n successes an
    equal-tailed Jeffreys interval does not contain the observed share."""
    low, high = np.asarray(lows, dtype=float), np.asarray(highs, dtype=float)
    ax.errorbar(xs, (low + high) / 2, yerr=(high - low) / 2, fmt="none", capsize=capsize, color=color)


def rate_axis(ax, highs) -> float:
    """A 0-based rate axis that shows small rates' whiskers: up to a little above the highest interval (at most 1).
    Returns the top."""
    finite = [h for h in highs if h is not None and np.isfinite(h)]
    top = min(1.0, 1.2 * max(finite, default=1.0) + 0.02)
    ax.set_ylim(0, top)
    return top


def accuracy_plot(results: dict, path: Path) -> Path:
    """One marker per system and task, whiskers from ci_low to ci_high."""
    plt = _pyplot()
    entries = results["results"]
    tasks = list(dict.fromkeys(e["task"] for e in entries))
    systems = list(dict.fromkeys(system_name(e) for e in entries))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) * max(1, len(systems)) ** 0.5 + 2), 3.8))
    width = 0.8 / max(1, len(systems))
    for s, name in enumerate(systems):
        mine = {e["task"]: e for e in entries if system_name(e) == name}
        xs = [t + (s - (len(systems) - 1) / 2) * width for t, task in enumerate(tasks) if task in mine]
        es = [mine[task] for task in tasks if task in mine]
        points, = ax.plot(xs, [e["accuracy"] for e in es], "o", label=name)
        interval_bars(ax, xs, [e["ci_low"] for e in es], [e["ci_high"] for e in es], points.get_color())
    level = int(round(100 * results["stats"]["ci_level"]))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    rate_axis(ax, [e["ci_high"] for e in entries])
    ax.set_xlabel("task")
    ax.set_ylabel(f"accuracy ({level}% Jeffreys interval)")
    ax.set_title("accuracy per task")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def pass_at_k_plot(results: dict, path: Path) -> Path:
    """pass@k against k, one panel per task, one line per system, whiskers from the bootstrap over problems."""
    plt = _pyplot()
    entries = results["results"]
    tasks = list(dict.fromkeys(e["task"] for e in entries))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [e for e in entries if e["task"] == task]
        offset = 0.06
        all_ks: set[int] = set()
        for s, e in enumerate(mine):
            ks = sorted(int(k) for k, v in e["pass_at_k"].items() if v is not None)
            if not ks:
                continue
            all_ks.update(ks)
            values = [e["pass_at_k"][str(k)] for k in ks]
            shift = (s - (len(mine) - 1) / 2) * offset
            line, = ax.plot([k + shift for k in ks], values, "o-", label=system_name(e))
            interval_bars(ax, [k + shift for k in ks], [e["pass_at_k_ci"][str(k)][0] for k in ks],
                          [e["pass_at_k_ci"][str(k)][1] for k in ks], line.get_color(), capsize=3)
        ax.set_xticks(sorted(all_ks))
        rate_axis(ax, [hi for e in mine for lo_hi in e["pass_at_k_ci"].values() if lo_hi for hi in lo_hi[1:]])
        ax.set_xlabel("k (samples per problem)")
        level = int(round(100 * results["stats"]["ci_level"]))
        ax.set_ylabel(f"pass@k ({level}% bootstrap interval)")
        ax.set_title(f"pass@k: {task}")
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def teaching_plot(results: dict, path: Path) -> Path | None:
    """Student alone against teacher + student per (teacher, task), with interval whiskers."""
    entries = [e for e in results["results"] if e["protocol"] == "adaptive_teaching"]
    if not entries:
        return None
    plt = _pyplot()
    labels = [f"{e['model']}\n{e['task']}" for e in entries]
    x = np.arange(len(entries))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(entries) + 2), 3.8))
    alone = [e["baseline_accuracy"] for e in entries]
    taught = [e["with_teaching_accuracy"] for e in entries]
    ax.bar(x - 0.2, alone, 0.4, label="student alone")
    ax.bar(x + 0.2, taught, 0.4, label="teacher + student")
    interval_bars(ax, x - 0.2, [e["baseline_ci_low"] for e in entries], [e["baseline_ci_high"] for e in entries], "k")
    interval_bars(ax, x + 0.2, [e["ci_low"] for e in entries], [e["ci_high"] for e in entries], "k")
    axis_top = rate_axis(ax, [max(e["baseline_ci_high"], e["ci_high"]) * 1.15 for e in entries])
    for i, e in enumerate(entries):
        top = max(e["baseline_ci_high"], e["ci_high"])
        ax.annotate(f"Δ {e['delta']:+.3f} (paired)", (x[i], top + 0.03 * axis_top), ha="center", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("teacher and task")
    ax.set_ylabel("student accuracy")
    ax.set_title("teaching: the same student, alone and taught")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def pareto_plot(points: Mapping[str, tuple[float, float]], path: Path, title: str = "accuracy against tokens"
                ) -> Path:
    """Every system at (mean tokens, accuracy); the frontier (no other system is as accurate for fewer tokens) is
    joined by a line."""
    plt = _pyplot()
    frontier = token_frontier(points)
    fig, ax = plt.subplots(figsize=(6, 4))
    at: dict[tuple[float, float], list[str]] = {}
    for name, (acc, tokens) in points.items():
        at.setdefault((tokens, acc), []).append(name)
    labelled: set[bool] = set()
    for i, ((tokens, acc), names) in enumerate(sorted(at.items(), key=lambda item: item[0][1])):
        # systems at one point share one label; labels of points in accuracy order alternate above and below
        on = any(n in frontier for n in names)
        ax.scatter([tokens], [acc], marker="o" if on else "x", s=50, color="C0" if on else "C7",
                   label=None if on in labelled else ("on the frontier" if on else "dominated"))
        labelled.add(on)
        ax.annotate("\n".join(names), (tokens, acc), textcoords="offset points", xytext=(6, 6 if i % 2 else -14),
                    fontsize=8)
    if len(frontier) > 1:
        ax.plot([points[n][1] for n in frontier], [points[n][0] for n in frontier], "-", color="C0",
                label="Pareto frontier")
    if points:
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("mean generated tokens per sample (the evaluated model)")
    ax.set_ylabel("accuracy (weighted over tasks)")
    rate_axis(ax, [acc for acc, _ in points.values()])
    ax.margins(x=0.25)
    ax.set_title(title)
    return _save(fig, path)


def token_points(results: dict) -> dict[str, tuple[float, float]]:
    return {system_name(a): (a["accuracy"], a["mean_tokens"]) for a in results["aggregates"]
            if a["accuracy"] is not None and a["mean_tokens"] is not None}


def write_plots(results: dict, out_dir: Path) -> list[str]:
    """Every plot of an evaluation; returns their file names (relative to out_dir)."""
    written = [accuracy_plot(results, out_dir / "accuracy.png"), pass_at_k_plot(results, out_dir / "pass_at_k.png"),
               teaching_plot(results, out_dir / "teaching.png"), pareto_plot(token_points(results),
                                                                              out_dir / "pareto.png")]
    return [p.name for p in written if p is not None]
