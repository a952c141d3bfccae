"""How much signal the adaptive-teaching reward gives GRPO, group by group, on real rollouts of an SFT'd teacher and
student (the quickstart's by default):

    python -m experiments.teaching_diagnosis --teacher runs/quickstart_sft/hf_model \
        --student runs/quickstart_student_sft/hf_model --prompts 32 --repeats 4

One rollout draws R = `--repeats` times the recipe's student samples (k baseline, m with each teaching), so each
teaching's reward can be recomputed R times at the recipe's k and m (the noise GRPO sees), and once from all R * k
and R * m samples (close to the reward of the student's expected accuracy). It writes diagnosis.json with:

- ranking: over pairs (correct teaching, wrong teaching) in one group, how often the advantage ranks the correct one
  higher, lower, or ties them; a teaching is correct when it states the ones digits, their sum and the carry right;
- variance: per group, the variance of one teaching's reward over student resampling (noise) against the variance
  between teachings of their mean rewards (signal, less the noise the means keep);
- zero_std_share: groups whose rewards are all equal, at the recipe's k and m and pooled;
- errors: where the teacher's teachings go wrong (missing tags, cut off at the length limit, no step, wrong digits,
  wrong sum or carry) and the student's accuracy given each kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from rcl.grpo import group_advantages
from rcl.rewards import RolloutSample
from rcl.tasks.teaching_check import VERDICTS, teaching_verdict


@dataclass
class TeachingDraw:
    """One teaching and the student's R repeated draws: per repeat, k baseline and m with-teaching correctness."""

    verdict: str
    teaching_tokens: int
    has_tags: bool
    baseline: list[list[bool]]
    """R lists of k: the group's shared baseline draws."""
    with_teaching: list[list[bool]]
    """R lists of m."""


def split_draws(values: Sequence[bool], per_draw: int) -> list[list[bool]]:
    """Consecutive chunks of `per_draw` values: R = len(values) // per_draw independent draws of one sample size."""
    if per_draw < 1 or len(values) % per_draw:
        raise ValueError(f"{len(values)} samples do not split into draws of {per_draw}")
    return [list(values[i:i + per_draw]) for i in range(0, len(values), per_draw)]


def draw_rewards(draw: TeachingDraw, reward: Callable[[RolloutSample], float], correctness_weight: float = 0.0
                 ) -> list[float]:
    """The teaching's reward at each of its R draws (plus `correctness_weight` when the teaching is correct, the
    teaching_correctness reward's share of the total)."""
    bonus = correctness_weight * (draw.verdict == "correct")
    return [reward(_sample(draw, base, with_)) + bonus for base, with_ in zip(draw.baseline, draw.with_teaching)]


def pooled_reward(draw: TeachingDraw, reward: Callable[[RolloutSample], float], correctness_weight: float = 0.0
                  ) -> float:
    """The reward from all R draws at once: k * R baseline and m * R with-teaching samples."""
    bonus = correctness_weight * (draw.verdict == "correct")
    return reward(_sample(draw, [b for d in draw.baseline for b in d],
                          [w for d in draw.with_teaching for w in d])) + bonus


def _sample(draw: TeachingDraw, base: list[bool], with_: list[bool]) -> RolloutSample:
    return RolloutSample(question="", ground_truth="", completion="", completion_tokens=draw.teaching_tokens,
                         teaching_tokens=draw.teaching_tokens, has_teaching_tags=draw.has_tags,
                         baseline_correct=base, with_teaching_correct=with_)


def ranking_counts(advantages: Sequence[float], correct: Sequence[bool]) -> tuple[int, int, int]:
    """(wins, ties, losses) over the pairs (correct teaching i, wrong teaching j) of one group: a win when
    advantage i > advantage j."""
    wins = ties = losses = 0
    for a, ok in zip(advantages, correct):
        if not ok:
            continue
        for b, other in zip(advantages, correct):
            if other:
                continue
            if abs(a - b) < 1e-9:
                ties += 1
            elif a > b:
                wins += 1
            else:
                losses += 1
    return wins, ties, losses


def variance_split(rewards: Sequence[Sequence[float]]) -> dict[str, float]:
    """One group's reward variance, rewards[i][r] = teaching i at draw r (R >= 2 draws, G >= 2 teachings):

    - noise: mean over teachings of the sample variance over draws (what one student draw adds);
    - between: sample variance over teachings of their mean rewards;
    - signal: between - noise / R, the part of `between` the teachings themselves make (floored at 0).
    """
    if len(rewards) < 2 or any(len(r) < 2 for r in rewards):
        raise ValueError("variance_split needs at least 2 teachings with at least 2 draws each")
    repeats = len(rewards[0])
    noise = statistics.fmean(statistics.variance(r) for r in rewards)
    between = statistics.variance([statistics.fmean(r) for r in rewards])
    return {"noise": noise, "between": between, "signal": max(0.0, between - noise / repeats)}


def diagnose(groups: Sequence[Sequence[TeachingDraw]], reward: Callable[[RolloutSample], float],
             correctness_weight: float = 0.0) -> dict:
    """The numbers in the module docstring, over `groups` (one list of G teachings per prompt), for the total reward
    `reward + correctness_weight * teaching_correctness`."""
    ranking = {"single_draw": [0, 0, 0], "pooled": [0, 0, 0]}
    zero_single = zero_pooled = single_groups = 0
    splits = []
    verdicts: Counter = Counter()
    accuracy_given: dict[str, list[float]] = {v: [] for v in VERDICTS}
    for group in groups:
        correct = [d.verdict == "correct" for d in group]
        per_draw = [draw_rewards(d, reward, correctness_weight) for d in group]
        pooled = torch.tensor([pooled_reward(d, reward, correctness_weight) for d in group])
        pooled_adv, pooled_zero = group_advantages(pooled, len(group))
        _add(ranking["pooled"], ranking_counts(pooled_adv.tolist(), correct))
        zero_pooled += int(pooled_zero.item())
        for r in range(len(per_draw[0])):
            adv, zero = group_advantages(torch.tensor([rs[r] for rs in per_draw]), len(group))
            _add(ranking["single_draw"], ranking_counts(adv.tolist(), correct))
            zero_single += int(zero.item())
            single_groups += 1
        if len(per_draw[0]) >= 2:
            splits.append(variance_split(per_draw))
        for d in group:
            verdicts[d.verdict] += 1
            accuracy_given[d.verdict].append(statistics.fmean(w for draw in d.with_teaching for w in draw))
    teachings = sum(verdicts.values())
    return {
        "groups": len(groups),
        "teachings": teachings,
        "ranking": {name: _ranking_summary(*counts) for name, counts in ranking.items()},
        "variance": {key: statistics.fmean(s[key] for s in splits) for key in ("noise", "between", "signal")}
        if splits else {},
        "zero_std_share": {"single_draw": zero_single / max(1, single_groups),
                           "pooled": zero_pooled / max(1, len(groups))},
        "errors": {v: {"share": verdicts[v] / max(1, teachings),
                       "student_accuracy_given": statistics.fmean(accuracy_given[v]) if accuracy_given[v] else None}
                   for v in VERDICTS},
        "student_alone_accuracy": statistics.fmean(b for g in groups for b in (x for d in g[0].baseline for x in d))
        if groups else None,
    }


def _add(total: list[int], counts: tuple[int, int, int]) -> None:
    for i, c in enumerate(counts):
        total[i] += c


def _ranking_summary(wins: int, ties: int, losses: int) -> dict:
    pairs = wins + ties + losses
    return {"pairs": pairs, "correct_above_wrong": wins / pairs if pairs else None,
            "tied": ties / pairs if pairs else None, "wrong_above_correct": losses / pairs if pairs else None}


def draws_from_rollout(rollout, num_generations: int, k: int, m: int) -> list[list[TeachingDraw]]:
    """The rollout's interactions as groups of TeachingDraws, splitting its R * k and R * m samples into draws."""
    draws = []
    for interaction, completion in zip(rollout.interactions, rollout.completions):
        verdict = teaching_verdict(interaction.question, interaction.teaching, interaction.has_teaching_tags,
                                   truncated=completion.finish_reason == "length")
        draws.append(TeachingDraw(verdict or "unparseable", interaction.teaching_tokens, interaction.has_teaching_tags,
                                  split_draws(interaction.baseline_correct, k),
                                  split_draws(interaction.with_teaching_correct, m)))
    return [draws[i:i + num_generations] for i in range(0, len(draws), num_generations)]


def examples(rollout, per_verdict: int = 2) -> dict[str, list[dict]]:
    """A few teachings of each kind, for reading."""
    out: dict[str, list[dict]] = {}
    for interaction, completion in zip(rollout.interactions, rollout.completions):
        verdict = teaching_verdict(interaction.question, interaction.teaching, interaction.has_teaching_tags,
                                   truncated=completion.finish_reason == "length") or "unparseable"
        if len(out.setdefault(verdict, [])) < per_verdict:
            out[verdict].append({"question": interaction.question, "completion": interaction.policy_completion,
                                 "teaching": interaction.teaching})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/quickstart_sft/hf_model")
    parser.add_argument("--student", default="runs/quickstart_student_sft/hf_model")
    parser.add_argument("--recipe", default="lightning_configs/quickstart_rcl.yaml",
                        help="RL recipe whose sampling, k, m, G and reward are diagnosed")
    parser.add_argument("--prompts", type=int, default=32, help="training prompts (groups) to roll out")
    parser.add_argument("--repeats", type=int, default=4, help="student draws R per teaching (>= 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/teaching_diagnosis/diagnosis.json")
    parser.add_argument("--overrides", nargs=argparse.REMAINDER, default=[],
                        help="recipe overrides, e.g. --generation.student_temperature 0.0 (a greedy student)")
    args = parser.parse_args(argv)

    from experiments.teaching_runner import build_runner, recipe_args
    from rcl.rewards import AdaptiveTeachingReward

    recipe = recipe_args(args.recipe, tuple(args.overrides))
    grpo = recipe["grpo"]
    runner, settings = build_runner(args.teacher, args.student, recipe, {"adaptive_teaching": 1.0})
    k, m = settings.baseline_samples, settings.student_samples
    wide = replace(settings, baseline_samples=k * args.repeats, student_samples=m * args.repeats)
    rows = recipe["data"].rl_dataset("train", runner.task.fields)
    rows = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed))
            [:args.prompts].tolist()]
    rollout = runner.run(rows, args.seed, wide)
    reward = AdaptiveTeachingReward(**recipe["reward"].kwargs.get("adaptive_teaching", {}))
    weights = dict(recipe["reward"].functions)
    unknown = sorted(set(weights) - {"adaptive_teaching", "teaching_correctness"})
    if unknown:
        raise SystemExit(f"teaching_diagnosis knows adaptive_teaching and teaching_correctness, not {unknown}")
    weighted = lambda sample: weights.get("adaptive_teaching", 0.0) * reward.score(sample)  # noqa: E731
    result = diagnose(draws_from_rollout(rollout, grpo.num_generations, k, m), weighted,
                      weights.get("teaching_correctness", 0.0))
    result["settings"] = {"recipe": args.recipe, "teacher": args.teacher, "student": args.student, "k": k, "m": m,
                          "num_generations": grpo.num_generations, "repeats": args.repeats, "prompts": args.prompts,
                          "seed": args.seed, "overrides": args.overrides, "reward": weights}
    result["examples"] = examples(rollout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"wrote {out}")
    return result


def report(result: dict) -> str:
    s = result["settings"]
    lines = [f"adaptive reward at k={s['k']}, m={s['m']}, G={s['num_generations']} on {result['groups']} groups "
             f"({result['teachings']} teachings, {s['repeats']} student draws each)"]
    for name, r in result["ranking"].items():
        if r["pairs"]:
            lines.append(f"  {name:11s}: correct teaching ranked above a wrong one in {r['correct_above_wrong']:.2f} "
                         f"of {r['pairs']} pairs, tied {r['tied']:.2f}, below {r['wrong_above_correct']:.2f}")
    if result["variance"]:
        v = result["variance"]
        lines.append(f"  reward variance per group: student-sampling noise {v['noise']:.4f}, between teachings "
                     f"{v['between']:.4f}, of which signal {v['signal']:.4f}")
    z = result["zero_std_share"]
    lines.append(f"  zero-std groups: {z['single_draw']:.2f} at k, m; {z['pooled']:.2f} pooled")
    lines.append("  teachings: " + ", ".join(
        f"{v} {e['share']:.2f}" + (f" (student {e['student_accuracy_given']:.2f})"
                                   if e["student_accuracy_given"] is not None else "")
        for v, e in result["errors"].items() if e["share"]))
    lines.append(f"  student alone: {result['student_alone_accuracy']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
