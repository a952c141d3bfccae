"""Does GRPO on the adaptive-teaching reward make the teacher better? The same SFT checkpoints, GRPO at several RL
seeds, then every teacher (the SFT one and each seed's) scored greedily with the student on problems no SFT or RL run
saw (the final test split; the RL loop's own evaluations use the validation split):

    python -m experiments.teaching_study                     # 3 seeds x 120 steps of the quickstart RL recipe
    python -m experiments.teaching_study --overrides --reward.functions '{adaptive_teaching: 1.0}'  # without the aux
    python -m experiments.teaching_study --compare runs/study_a/study.json runs/study_b/study.json  # b - a, paired

It writes study.json (per seed: test accuracy before/after with a paired 95% interval, NDR with its interval, TES, the
reward curve; pooled over seeds: the paired interval of the mean change) and study.png (all seeds in one plot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

LEVEL = 0.95


def rl_command(recipe: str, seed: int, steps: int, out_dir: Path, teacher: str, student: str, eval_every: int,
               eval_prompts: int, overrides: list[str]) -> list[str]:
    return ["--config", recipe, "--trainer.seed", str(seed),
            "--trainer.max_steps", str(steps), "--trainer.out_dir", str(out_dir),
            "--trainer.checkpoint_every_n_steps", "0", "--trainer.loggers", "[csv]",
            "--teacher.model_name_or_path", teacher, "--student.model_name_or_path", student,
            "--eval.every_n_steps", str(eval_every), "--eval.num_prompts", str(eval_prompts),
            "--overwrite", "true", *overrides]


def test_outcomes(runner, settings, rows: list[dict], seed: int = 0) -> dict:
    """Greedy teacher + student and greedy student alone on `rows`, one of each per problem."""
    from rcl.rl.loop import eval_settings
    from rcl.rl.args import EvalArgs

    rollout = runner.run(rows, seed, eval_settings(settings, EvalArgs(temperature=0.0)))
    return {"questions": [i.question for i in rollout.interactions],
            "alone": [i.p_base for i in rollout.interactions], "with": [i.p_with for i in rollout.interactions],
            "completed": [i.completed for i in rollout.interactions],
            "teaching_tokens": [i.teaching_tokens for i in rollout.interactions]}


def outcome_summary(outcome: dict) -> dict:
    """Accuracies with Jeffreys intervals, NDR with a bootstrap interval, TES, for one teacher on the test rows."""
    from rcl.eval.stats import jeffreys_interval, teaching_effect, tes

    n = len(outcome["with"])
    effect = teaching_effect([[bool(b)] for b in outcome["alone"]], [[bool(w)] for w in outcome["with"]], LEVEL)
    completion = statistics.fmean(outcome["completed"])
    tokens = statistics.fmean(outcome["teaching_tokens"])
    return {
        "problems": n,
        "with_teaching_accuracy": effect.with_teaching_accuracy,
        "with_teaching_ci": jeffreys_interval(sum(outcome["with"]), n, LEVEL),
        "student_alone_accuracy": effect.baseline_accuracy,
        "student_alone_ci": jeffreys_interval(sum(outcome["alone"]), n, LEVEL),
        "teaching_gain": _estimate(effect.delta),
        "ndr": _estimate(effect.ndr),
        "tes": tes(effect.baseline_accuracy, effect.with_teaching_accuracy, completion, tokens),
        "teaching_tokens_mean": tokens,
    }


def _estimate(e) -> dict:
    return {"value": e.value, "low": e.low, "high": e.high}


def rl_changes(before: list[float], afters: list[list[float]]) -> dict:
    """Per seed: after - before on the same problems with a paired bootstrap interval; pooled: the mean over seeds of
    each problem's after, minus before, so the interval resamples problems with all seeds' pairs kept together."""
    from rcl.eval.stats import paired_delta

    per_seed = [_estimate(paired_delta(after, before, LEVEL)) for after in afters]
    pooled_after = [statistics.fmean(values) for values in zip(*afters)]
    return {"per_seed": per_seed, "pooled": _estimate(paired_delta(pooled_after, before, LEVEL))}


def reward_curve(history: list[dict]) -> list[tuple[int, float]]:
    return [(h["step"], h["reward"]) for h in history if "reward" in h]


def val_curve(history: list[dict]) -> list[tuple[int, float]]:
    return [(h["step"], h["eval/with_teaching_accuracy"]) for h in history if "eval/with_teaching_accuracy" in h]


def plot(study: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.quickstart import trailing_mean

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for run in study["runs"]:
        steps, rewards = zip(*run["reward_curve"]) if run["reward_curve"] else ((), ())
        window = max(1, len(rewards) // 8)
        line, = axes[0].plot(steps[window - 1:], trailing_mean(list(rewards), window), label=f"seed {run['seed']}")
        if run["val_curve"]:
            axes[1].plot(*zip(*run["val_curve"]), "o-", color=line.get_color(), label=f"seed {run['seed']}")
        after = run["after"]
        axes[2].errorbar([run["seed"]], [after["with_teaching_accuracy"]], fmt="o", color=line.get_color(),
                         yerr=[[max(0.0, after["with_teaching_accuracy"] - after["with_teaching_ci"][0])],
                               [max(0.0, after["with_teaching_ci"][1] - after["with_teaching_accuracy"])]])
    before = study["before"]
    axes[2].axhline(before["with_teaching_accuracy"], color="gray", ls="--", label="teacher + student, before RL")
    axes[2].axhline(before["student_alone_accuracy"], color="black", ls=":", label="student alone")
    axes[0].set_title("training reward (trailing mean)")
    axes[1].set_title("teacher + student, validation (greedy)")
    axes[2].set_title(f"teacher + student, test, after RL ({int(LEVEL * 100)}% CI)")
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("optimizer step")
    axes[2].set_xlabel("RL seed")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report(study: dict) -> str:
    b = study["before"]
    lines = [f"test split: {b['problems']} unseen problems; greedy teacher + student; {LEVEL:.0%} intervals",
             f"  student alone          {b['student_alone_accuracy']:.3f}",
             f"  before RL (SFT teacher) {b['with_teaching_accuracy']:.3f}  NDR {_fmt(b['ndr'])}  TES {b['tes']:.3f}"]
    for run, change in zip(study["runs"], study["rl_change"]["per_seed"]):
        a = run["after"]
        lines.append(f"  seed {run['seed']}: after {a['with_teaching_accuracy']:.3f}  change {_fmt(change, '+')}  "
                     f"NDR {_fmt(a['ndr'])}  TES {a['tes']:.3f}  vs alone {a['teaching_gain']['value']:+.3f}  "
                     f"({run['seconds']:.0f}s)")
    lines.append(f"  pooled change over seeds: {_fmt(study['rl_change']['pooled'], '+')}")
    if "rl_change_best" in study:
        for run, change in zip(study["runs"], study["rl_change_best"]["per_seed"]):
            lines.append(f"  seed {run['seed']}, best validation policy (step {run['best_step']}): "
                         f"{run['best']['with_teaching_accuracy']:.3f}  change {_fmt(change, '+')}  "
                         f"NDR {_fmt(run['best']['ndr'])}")
        lines.append(f"  pooled change, best validation policies: {_fmt(study['rl_change_best']['pooled'], '+')}")
    return "\n".join(lines)


def compare_studies(a: dict, b: dict) -> dict:
    """Study b against study a on the same test problems (e.g. another student or setting): teacher + student before
    RL, after RL (each problem's mean over seeds) and student alone, b - a with paired intervals."""
    from rcl.eval.stats import paired_delta

    if a["test_questions"] != b["test_questions"]:
        raise SystemExit("teaching_study --compare: the two studies scored different test problems")
    after = [[statistics.fmean(v) for v in zip(*(r["after_correct"] for r in s["runs"]))] for s in (a, b)]
    return {"before": _estimate(paired_delta(b["before_correct"], a["before_correct"], LEVEL)),
            "after": _estimate(paired_delta(after[1], after[0], LEVEL)),
            "student_alone": _estimate(paired_delta(b["student_alone_correct"], a["student_alone_correct"], LEVEL)),
            "rl_change": {"a": a["rl_change"]["pooled"], "b": b["rl_change"]["pooled"]}}


def comparison_report(names: tuple[str, str], cmp: dict) -> str:
    return "\n".join([f"{names[1]} minus {names[0]}, same test problems, paired {LEVEL:.0%} intervals:",
                      f"  teacher + student before RL      {_fmt(cmp['before'], '+')}",
                      f"  teacher + student after RL       {_fmt(cmp['after'], '+')}  (mean over seeds per problem)",
                      f"  student alone                    {_fmt(cmp['student_alone'], '+')}",
                      f"  RL's pooled change: {_fmt(cmp['rl_change']['a'], '+')} in {names[0]}, "
                      f"{_fmt(cmp['rl_change']['b'], '+')} in {names[1]}"])


def _fmt(e: dict, sign: str = "") -> str:
    return f"{e['value']:{sign}.3f} [{e['low']:{sign}.3f}, {e['high']:{sign}.3f}]"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/quickstart_sft/hf_model", help="SFT'd teacher (RL's start)")
    parser.add_argument("--student", default="runs/quickstart_student_sft/hf_model")
    parser.add_argument("--recipe", default="lightning_configs/quickstart_rcl.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=120, help="GRPO steps per seed")
    parser.add_argument("--eval-every", type=int, default=40, help="validation evaluation every N steps")
    parser.add_argument("--eval-prompts", type=int, default=100, help="validation problems per evaluation")
    parser.add_argument("--test-problems", type=int, default=400, help="unseen problems of the final test")
    parser.add_argument("--out", default="runs/teaching_study")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a seed's finished RL run in --out instead of training it again (a study split over "
                             "several commands; the runs must come from the same settings)")
    parser.add_argument("--overrides", nargs=argparse.REMAINDER, default=[],
                        help="recipe overrides for every RL run (the fix under test), e.g. --grpo.student_samples 4")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="compare two finished studies' study.json (B minus A) and exit, training nothing")
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        cmp = compare_studies(a, b)
        print(comparison_report(tuple(args.compare), cmp))
        return cmp

    from experiments.teaching_runner import build_runner, recipe_args, unseen_problems
    from rcl.rl.loop import cli_main

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe_args(args.recipe, tuple(args.overrides))
    data = recipe["data"]
    rows = unseen_problems(args.test_problems, data.synthetic_size, data.synthetic_seed, tuple(data.synthetic_levels))
    runner, settings = build_runner(args.teacher, args.student, recipe)
    before = test_outcomes(runner, settings, rows)
    runs, afters, bests = [], [], []
    for seed in args.seeds:
        run_dir = out / f"seed_{seed}"
        command = rl_command(args.recipe, seed, args.steps, run_dir, args.teacher, args.student, args.eval_every,
                             args.eval_prompts, args.overrides)
        start = time.perf_counter()
        if args.reuse and (run_dir / "hf_model").is_dir() and (run_dir / "history.jsonl").exists():
            print(f"\n=== RL seed {seed}: reusing {run_dir}", flush=True)
        else:
            print(f"\n=== RL seed {seed}: python -m rcl fit {' '.join(command)}", flush=True)
            cli_main("fit", command)  # in this process: a fresh interpreter per seed would cost its imports each time
        seconds = time.perf_counter() - start
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
        after = test_outcomes(build_runner(str(run_dir / "hf_model"), args.student, recipe)[0], settings, rows)
        afters.append(after["with"])
        run = {"seed": seed, "seconds": seconds, "after": outcome_summary(after), "after_correct": after["with"]}
        kept = run_dir / "best_hf_model"  # eval.keep_best: the policy of the best validation evaluation
        if kept.is_dir():
            best = test_outcomes(build_runner(str(kept), args.student, recipe)[0], settings, rows)
            bests.append(best["with"])
            run.update(best_step=json.loads((run_dir / "best.json").read_text())["step"], best=outcome_summary(best))
        runs.append({**run,
                     "reward_curve": reward_curve(history), "val_curve": val_curve(history)})
    study = {"settings": {k: v for k, v in vars(args).items()}, "before": outcome_summary(before), "runs": runs,
             "test_questions": before["questions"], "before_correct": before["with"],
             "student_alone_correct": before["alone"], "rl_change": rl_changes(before["with"], afters)}
    if bests and len(bests) == len(afters):
        study["rl_change_best"] = rl_changes(before["with"], bests)
    (out / "study.json").write_text(json.dumps(study, indent=2))
    print(report(study))
    print(f"wrote {out / 'study.json'} and {plot(study, out / 'study.png')}")
    return study


if __name__ == "__main__":
    main()
