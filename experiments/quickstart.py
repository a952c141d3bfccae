"""The whole embedded pipeline on CPU: tiny student SFT, tiny teacher SFT, GRPO, then an evaluation of the teacher
before and after RL; a table and a plot at the end.

    python -m experiments.quickstart             # three training runs and the evaluation; README lists times
    python -m experiments.quickstart --skip-sft  # reuse the SFT outputs of an earlier run
    python -m experiments.quickstart --skip-eval # no evaluation after training

Each run replaces the outputs of the quickstart's earlier run of it (`--overwrite true`); the plot is drawn from the
RL history the same command wrote, and a fresh RL run removes an older plot with its history.

Every step is an ordinary `python -m rcl fit|evaluate --config lightning_configs/<recipe>.yaml` run, so each can be
re-run or changed on its own. The RL run's history (runs/quickstart_rcl/history.jsonl) feeds the table and the plot;
the evaluation (runs/eval_quickstart/results.json) gives RL's change with a paired interval.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

STEPS = (
    ("student SFT", "lightning_configs/quickstart_student_sft.yaml", "runs/quickstart_student_sft/hf_model"),
    ("teacher SFT", "lightning_configs/quickstart_sft.yaml", "runs/quickstart_sft/hf_model"),
    ("GRPO (adaptive teaching)", "lightning_configs/quickstart_rcl.yaml", "runs/quickstart_rcl/hf_model"),
)
RL_DIR = Path("runs/quickstart_rcl")
EVAL_RECIPE, EVAL_DIR = "lightning_configs/eval_quickstart.yaml", Path("runs/eval_quickstart")


def run_step(name: str, recipe: str, overrides: list[str], command: str = "fit") -> float:
    """One `python -m rcl fit|evaluate` run. The quickstart re-makes its own training runs, so it replaces their
    earlier outputs."""
    if command == "fit":
        overrides = [*overrides, "--overwrite", "true"]
    print(f"\n=== {name}: python -m rcl {command} --config {recipe} {' '.join(overrides)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "rcl", command, "--config", recipe, *overrides]).returncode
    if code:
        raise SystemExit(f"quickstart: {name} stopped with exit status {code} (its output is above)")
    return time.perf_counter() - start


def load_history(path: Path) -> list[dict]:
    if not path.exists():
        raise SystemExit(f"quickstart: {path} is missing; did the RL step run?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(history: list[dict]) -> dict:
    """First and last evaluation, and mean training reward over the first and last fifth of the steps."""
    evals = [h for h in history if "eval/with_teaching_accuracy" in h]
    train = [h for h in history if "reward" in h]
    if not evals or not train:
        raise SystemExit("quickstart: the RL history has no evaluation or no training steps")
    fifth = max(1, len(train) // 5)
    mean = lambda rows: sum(r["reward"] for r in rows) / len(rows)  # noqa: E731
    return {
        "first_eval": evals[0],
        "last_eval": evals[-1],
        "reward_first_fifth": mean(train[:fifth]),
        "reward_last_fifth": mean(train[-fifth:]),
        "steps": train[-1]["step"],
    }


def print_table(summary: dict, seconds: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    first, last = summary["first_eval"], summary["last_eval"]
    table = Table(title=f"rcl quickstart: held-out problems, before and after {summary['steps']} GRPO steps")
    table.add_column("metric")
    table.add_column("before RL", justify="right")
    table.add_column("after RL", justify="right")
    for key, label in (
        ("eval/baseline_accuracy", "student alone: accuracy"),
        ("eval/with_teaching_accuracy", "teacher + student: accuracy"),
        ("eval/ndr", "NDR"),
        ("eval/tes", "TES"),
        ("eval/learning_gain", "learning gain"),
        ("eval/completion_rate", "completion rate"),
        ("eval/teaching_tokens_mean", "teaching tokens"),
    ):
        if key in first:
            table.add_row(label, with_interval(first, key), with_interval(last, key))
    table.add_row("mean reward, first / last fifth of steps", f"{summary['reward_first_fifth']:.3f}",
                  f"{summary['reward_last_fifth']:.3f}")
    console = Console()
    console.print(table)
    console.print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    beats = last["eval/with_teaching_accuracy"] > last["eval/baseline_accuracy"]
    learns = summary["reward_last_fifth"] > summary["reward_first_fifth"]
    console.print(f"teacher + student beats student alone: {'yes' if beats else 'NO'}; "
                  f"reward rose over training: {'yes' if learns else 'NO'}")


def with_interval(metrics: dict, key: str) -> str:
    """The value, and its 80% Jeffreys interval when the loop logged one (the accuracies)."""
    from rcl.eval.report import fmt

    return fmt(metrics[key], metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high"))


def rl_change(results: dict) -> dict | None:
    """teacher_rl minus teacher_sft, teacher + student accuracy on the same problems, from the evaluation."""
    return next((d for d in results["paired_differences"] if (d["model"], d["reference"], d["protocol"]) ==
                 ("teacher_rl", "teacher_sft", "adaptive_teaching")), None)


def print_rl_change(results: dict) -> None:
    change = rl_change(results)
    if change is None:
        print("evaluation: no teacher_rl - teacher_sft difference in the results")
        return
    level = int(round(100 * change["ci_level"]))
    print(f"RL's change in teacher + student accuracy, paired over {change['problems']} held-out problems "
          f"(python -m rcl evaluate --config {EVAL_RECIPE}): {change['delta']:+.3f} "
          f"[{change['ci_low']:+.3f}, {change['ci_high']:+.3f}] ({level}% interval)")


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of each full window of `window` consecutive values (len(values) - window + 1 of them)."""
    sums = [0.0, *itertools.accumulate(values)]
    return [(sums[i + window] - sums[i]) / window for i in range(len(values) - window + 1)]


def plot(history: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "reward" in h]
    evals = [h for h in history if "eval/with_teaching_accuracy" in h]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps, rewards = [h["step"] for h in train], [h["reward"] for h in train]
    axes[0].plot(steps, rewards, alpha=0.35, label="reward (train)")
    window = max(1, len(rewards) // 10)
    axes[0].plot(steps[window - 1:], trailing_mean(rewards, window), label=f"mean of last {window} steps")
    axes[0].set_title("reward")
    if any("teaching/ndr" in h for h in train):
        axes[1].plot([h["step"] for h in train], [h.get("teaching/ndr") for h in train], label="NDR (train)")
    axes[1].plot([h["step"] for h in evals], [h.get("eval/ndr") for h in evals], "o-", label="NDR (held-out)")
    axes[1].set_title("non-degradation rate")
    axes[2].plot([h["step"] for h in evals], [h["eval/baseline_accuracy"] for h in evals], "o-", label="student alone")
    axes[2].plot([h["step"] for h in evals], [h["eval/with_teaching_accuracy"] for h in evals], "o-",
                 label="teacher + student")
    axes[2].set_title("held-out accuracy")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sft", action="store_true", help="reuse existing SFT outputs")
    parser.add_argument("--seed", type=int, default=None, help="override every recipe's seed")
    parser.add_argument("--skip-eval", action="store_true", help="no evaluation of the teachers after training")
    args = parser.parse_args(argv)
    seconds: dict[str, float] = {}
    for name, recipe, output in STEPS:
        if args.skip_sft and "SFT" in name and Path(output).exists():
            continue
        overrides = []
        if args.seed is not None:
            overrides = ["--seed_everything" if "SFT" in name else "--trainer.seed", str(args.seed)]
        seconds[name] = run_step(name, recipe, overrides)
    history = load_history(RL_DIR / "history.jsonl")
    print_table(summarize(history), seconds)
    print(f"plot: {plot(history, RL_DIR / 'quickstart.png')}")
    if not args.skip_eval:
        import shutil

        shutil.rmtree(EVAL_DIR, ignore_errors=True)  # the models were just trained: nothing earlier applies
        run_step("evaluation", EVAL_RECIPE, [], command="evaluate")
        print_rl_change(json.loads((EVAL_DIR / "results.json").read_text()))


if __name__ == "__main__":
    main()
