"""study.json, report.md and the PNG plots from the per-seed summaries (experiments.sft_vs_rlvr.summary)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from experiments.sft_vs_rlvr.analysis import spread
from rcl.eval.report import fmt

LABELS = {"sft": "SFT", "rlvr": "RLVR", "base": "base"}
COLORS = {"sft": "tab:blue", "rlvr": "tab:orange", "base": "tab:gray"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _models(summary: dict) -> list[dict]:
    return [*summary["arms"], summary["base"]]


def plot_accuracy(summary: dict, out: Path) -> Path:
    """Held-out accuracy and pass@k per model with their intervals (and the OOD accuracy when there is one)."""
    plt = _pyplot()
    models = _models(summary)
    ks = sorted(models[0]["pass_at_k"], key=int)
    panels = [("held-out", lambda m: [(f"pass@{k}", m["pass_at_k"][k], m["pass_at_k_ci"][k]) for k in ks])]
    if models[0].get("ood"):
        panels.append(("out of distribution", lambda m: [(f"pass@{k}", m["ood"]["pass_at_k"][k],
                                                           m["ood"]["pass_at_k_ci"][k]) for k in ks]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    width = 0.8 / len(models)
    for ax, (title, values) in zip(axes[0], panels):
        for j, m in enumerate(models):
            bars = values(m)
            xs = [i + j * width for i in range(len(bars))]
            ys = [b[1] if b[1] is not None else math.nan for b in bars]
            err = [[y - (b[2] or [y, y])[0] for y, b in zip(ys, bars)], [(b[2] or [y, y])[1] - y for y, b in zip(ys, bars)]]
            ax.bar(xs, ys, width, yerr=err, capsize=3, color=COLORS[m["name"]], label=LABELS[m["name"]])
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(ks))], [f"pass@{k}" for k in ks])
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} ({int(round(100 * models[0]['ci_level']))}% intervals)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(summary: dict, out: Path) -> Path:
    """SFT loss, RLVR reward and KL, and both arms' held-out accuracy against training samples."""
    plt = _pyplot()
    curves = summary["curves"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (arm, key, title) in zip(axes[:3], (("sft", "loss", "SFT train loss"), ("rlvr", "reward", "RLVR reward"),
                                                ("rlvr", "kl", "RLVR KL to the base"))):
        points = curves[arm][key]
        ax.plot([p[1] for p in points], [p[2] for p in points], color=COLORS[arm])
        ax.set_title(title if points else f"{title} (not logged)")
    for arm in ("sft", "rlvr"):
        points = curves[arm]["accuracy"]
        axes[3].plot([p[1] for p in points], [p[2] for p in points], "o-", color=COLORS[arm], label=LABELS[arm])
    target = summary["sample_efficiency"]["target_accuracy"]
    axes[3].axhline(target, ls=":", color="k", lw=1, label=f"target {target:g}")
    axes[3].set_title("held-out accuracy (greedy)")
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("training samples")
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(summary: dict, out: Path) -> Path:
    """Pooled relative change per module group, and each arm's most changed tensors."""
    plt = _pyplot()
    weights = summary["weights"]
    groups = list(dict.fromkeys(g for arm in weights.values() for g in arm["groups"]))
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8), gridspec_kw={"width_ratios": [1, 1.3, 1.3]})
    for j, arm in enumerate(weights):
        axes[0].bar([i + 0.4 * j for i in range(len(groups))],
                    [weights[arm]["groups"].get(g, {}).get("pooled", math.nan) for g in groups], 0.4,
                    color=COLORS[arm], label=LABELS[arm])
    axes[0].set_xticks([i + 0.2 for i in range(len(groups))], groups)
    axes[0].set_yscale("log")
    axes[0].set_title("||ΔW|| / ||W|| per group (pooled)")
    axes[0].legend(fontsize=8)
    for ax, arm in zip(axes[1:], weights):
        top = weights[arm]["top"][:8][::-1]
        ax.barh([r["name"] for r in top], [r["relative_change"] for r in top], color=COLORS[arm])
        ax.set_title(f"{LABELS[arm]}: most changed tensors")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = out / "weights.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pass(m: dict, k: str) -> str:
    ci = m["pass_at_k_ci"].get(k) or [None, None]
    return fmt(m["pass_at_k"].get(k), ci[0], ci[1])


def _count(value: float | None) -> str:
    return "not logged" if value is None else f"{value:.0f}"


def seed_markdown(s: dict, plots: list[str], prefix: str = "") -> str:
    level = int(round(100 * s["arms"][0]["ci_level"]))
    models = _models(s)
    ks = sorted(models[0]["pass_at_k"], key=int)
    lines = [f"## Seed {s['seed']}", "",
             f"Numbers from `{s['results_file']}` (re-make: `{s['eval_command']}`), the arms' `metrics.csv` / "
             f"`history.jsonl` and exported weights. Intervals: {level}% (Jeffreys for accuracy, bootstrap over "
             "problems for pass@k and the paired difference).", "",
             "| model | budget | accuracy | " + " | ".join(f"pass@{k}" for k in ks) + " | OOD accuracy |",
             "|---|---|---|" + "---|" * len(ks) + "---|"]
    for m in models:
        budget = m.get("budget")
        b = (f"{budget['optimizer_steps']} steps, {budget['training_samples']} samples" if budget else "-")
        ood = fmt(m["ood"]["accuracy"], m["ood"]["ci_low"], m["ood"]["ci_high"]) if m.get("ood") else "-"
        lines.append(f"| {LABELS[m['name']]} | {b} | {fmt(m['accuracy'], m['ci_low'], m['ci_high'])} | "
                     + " | ".join(_pass(m, k) for k in ks) + f" | {ood} |")
    d = s["difference"]
    lines += ["", f"**RLVR − SFT** (paired over {d['problems']} held-out problems): "
              f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"]
    if s.get("ood_difference"):
        o = s["ood_difference"]
        lines[-1] += f"; out of distribution: {o['delta']:+.3f} [{o['ci_low']:+.3f}, {o['ci_high']:+.3f}]"
    arms = {a["name"]: a for a in s["arms"]}
    lines += ["", "### Budget", "",
              "| arm | optimizer steps | training samples | completions trained on | tokens processed | loss tokens | "
              "tokens generated |", "|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        b = a["budget"]
        lines.append(f"| {LABELS[name]} | {b['optimizer_steps']} | {b['training_samples']} | {b['completions']} | "
                     + " | ".join(_count(b.get(k)) for k in ("tokens_processed", "loss_tokens", "generated_tokens"))
                     + " |")
    lines += ["", f"Matched: **{arms['sft']['budget']['measure']}**. Tokens processed: through the trained model's "
              "forward and backward (SFT: prompt and answer; RLVR: each sampled completion with its prompt); loss "
              "tokens: the answer or completion tokens among them. Eval rows hash "
              f"`{arms['sft']['eval_rows_hash'][:12]}` (both arms), template hash `{arms['sft']['template_hash'][:12]}`"
              f" (SFT) / `{arms['rlvr']['template_hash'][:12]}` (RLVR) / `{arms['sft']['eval_template_hash'][:12]}` "
              "(evaluation).", ""]
    eff = s["sample_efficiency"]
    lines += ["### Learning curves and sample efficiency", "",
              f"![learning curves]({prefix}learning_curves.png)", "",
              f"Training samples at which the held-out greedy accuracy first reaches {eff['target_accuracy']:g}: "
              f"SFT {eff['sft'] if eff['sft'] is not None else 'not reached'}, "
              f"RLVR {eff['rlvr'] if eff['rlvr'] is not None else 'not reached'} (SFT: `val/exact_match` on the "
              "validation rows; RLVR: `eval/accuracy` on the held-out prompts).", "",
              "### Solution diversity (held-out, among the k samples of each problem)", "",
              "| model | distinct answers | distinct texts | answer entropy (nats) |", "|---|---|---|---|"]
    for m, v in s["diversity"].items():
        lines.append(f"| {LABELS[m]} | {v['distinct_answers']:.2f} | {v['distinct_texts']:.2f} | "
                     f"{v['answer_entropy']:.3f} |")
    e = s["errors"]
    lines += ["", "### Error patterns", "",
              f"Over {e['problems']} held-out problems (solved: per-problem accuracy ≥ {e['threshold']}): RLVR solves "
              f"{e['rlvr_right_sft_wrong']['count']} that SFT does not; SFT solves {e['sft_right_rlvr_wrong']['count']}"
              " that RLVR does not.", ""]
    for key, title in (("rlvr_right_sft_wrong", "RLVR right, SFT wrong"), ("sft_right_rlvr_wrong",
                                                                            "SFT right, RLVR wrong")):
        for ex in e[key]["examples"]:
            lines.append(f"- {title}: `{ex['question']}` (gold {ex['gold']}): SFT {ex['sft']!r}, RLVR {ex['rlvr']!r}")
    lines += ["", "### Weight differences from the base", "", f"![weights]({prefix}weights.png)", "",
              "| group | SFT pooled ‖ΔW‖/‖W‖ | RLVR pooled ‖ΔW‖/‖W‖ | SFT max | RLVR max |", "|---|---|---|---|---|"]
    w = s["weights"]
    for g in dict.fromkeys([*w["sft"]["groups"], *w["rlvr"]["groups"]]):
        a, b = w["sft"]["groups"].get(g, {}), w["rlvr"]["groups"].get(g, {})
        lines.append(f"| {g} | {a.get('pooled', math.nan):.3g} | {b.get('pooled', math.nan):.3g} | "
                     f"{a.get('max', math.nan):.3g} | {b.get('max', math.nan):.3g} |")
    lines += ["", f"![accuracy]({prefix}accuracy.png)", ""]
    return "\n".join(lines)


def spread_markdown(per_seed: list[dict]) -> str:
    rows = {"SFT accuracy": [s["arms"][0]["accuracy"] for s in per_seed],
            "RLVR accuracy": [s["arms"][1]["accuracy"] for s in per_seed],
            "RLVR − SFT": [s["difference"]["delta"] for s in per_seed]}
    lines = [f"## Spread over seeds {', '.join(str(s['seed']) for s in per_seed)}", "",
             "| quantity | mean | std | min | max |", "|---|---|---|---|---|"]
    for name, vals in rows.items():
        sp = spread(vals)
        lines.append(f"| {name} | {sp['mean']:.3f} | {sp['std']:.3f} | {sp['min']:.3f} | {sp['max']:.3f} |")
    return "\n".join(lines) + "\n"


def write_study(study, per_seed: list[dict], seconds: dict[str, float], config: dict) -> dict:
    out = Path(study.out_dir)
    for s in per_seed:
        seed_dir = Path(s["out_dir"])
        plots = [p.name for p in (plot_accuracy(s, seed_dir), plot_curves(s, seed_dir), plot_weights(s, seed_dir))]
        (seed_dir / "report.md").write_text(f"# {study.name}: SFT vs RLVR, seed {s['seed']}\n\n"
                                            + seed_markdown(s, plots))
        (seed_dir / "study.json").write_text(json.dumps(s, indent=1) + "\n")
    first = per_seed[0]
    document = {"name": study.name, "config": config, "seconds": seconds, "arms": first["arms"],
                "base": first["base"], "difference": first["difference"], "seeds": per_seed,
                "spread": {"sft_accuracy": spread([s["arms"][0]["accuracy"] for s in per_seed]),
                           "rlvr_accuracy": spread([s["arms"][1]["accuracy"] for s in per_seed]),
                           "delta": spread([s["difference"]["delta"] for s in per_seed])}}
    (out / "study.json").write_text(json.dumps(document, indent=1) + "\n")
    prefix = f"{Path(first['out_dir']).name}/"
    times = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    text = (f"# {study.name}: SFT vs RLVR from one base at a matched budget\n\n"
            f"`arms` and `difference` of study.json are seed {first['seed']}'s; each seed's folder holds its own "
            f"report. Wall time: {times}.\n\n"
            + (spread_markdown(per_seed) + "\n" if len(per_seed) > 1 else "")
            + seed_markdown(first, [], prefix))
    (out / "report.md").write_text(text)
    for s in per_seed:
        d = s["difference"]
        print(f"seed {s['seed']}: " + ", ".join(f"{LABELS[m['name']]} {fmt(m['accuracy'], m['ci_low'], m['ci_high'])}"
                                             for m in _models(s))
              + f"; RLVR - SFT {d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
    print(f"wrote {out / 'study.json'} and {out / 'report.md'}")
    return document
