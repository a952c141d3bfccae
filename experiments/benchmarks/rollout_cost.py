"""What one adaptive-teaching rollout costs: generations and tokens per prompt, and seconds per RL step.

    python -m experiments.benchmarks rollout

rcl's design shares one student baseline (k samples) and one probe per prompt across the whole group, then samples
G teachings and m student solutions per teaching: per prompt 1 + k + G*m student generations and G teacher ones.
The original code ran every group member as an independent replica (its own baseline, probe and solution): 3*G
student generations and G teacher ones. Both are counted from real rollouts on tiny models (every `generate` goes
through a counting wrapper) and checked against the formulas. The step split (policy and student generation, reward,
training) comes from an in-process RL run's history; weight sync from the same run with the policy served by a
local `rcl serve --engine hf` server.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from experiments.benchmarks.common import format_table


@dataclass
class RolloutBenchConfig:
    preset: str = "tiny-1m"
    prompts: int = 4
    """Distinct prompts per step."""
    num_generations: int = 4
    """G."""
    baseline_samples: int = 2
    """k."""
    student_samples: int = 2
    """m."""
    policy_tokens: int = 24
    student_tokens: int = 12
    probe_tokens: int = 8
    steps: int = 3
    seed: int = 0


class CountingEngine:
    """Wraps a GenerationEngine and records every call: prompts, n, completions, tokens and seconds."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.calls: list[dict] = []

    def generate(self, prompts: Sequence[Sequence[int]], params: Any) -> list:
        start = time.perf_counter()
        out = self.engine.generate(prompts, params)
        self.calls.append({
            "prompts": len(prompts),
            "n": params.n,
            "completions": sum(len(g) for g in out),
            "tokens": sum(len(c.token_ids) for g in out for c in g),
            "seconds": time.perf_counter() - start,
        })
        return out

    def totals(self) -> dict:
        return {k: sum(c[k] for c in self.calls) for k in ("completions", "tokens", "seconds")}


def formula(cfg: RolloutBenchConfig) -> dict[str, dict[str, int]]:
    """Generations per prompt of each design."""
    g, k, m = cfg.num_generations, cfg.baseline_samples, cfg.student_samples
    return {
        "rcl": {"student": 1 + k + g * m, "teacher": g},
        "original": {"student": 3 * g, "teacher": g},
    }


def settings_for(cfg: RolloutBenchConfig):
    from rcl.engines import SamplingParams
    from rcl.rl.rollout import RolloutSettings

    return RolloutSettings(
        protocol="adaptive_teaching",
        num_generations=cfg.num_generations,
        baseline_samples=cfg.baseline_samples,
        student_samples=cfg.student_samples,
        max_probe_tokens=cfg.probe_tokens,
        missing_teaching="strip_thinking",
        policy=SamplingParams(max_tokens=cfg.policy_tokens, temperature=1.0),
        student=SamplingParams(max_tokens=cfg.student_tokens, temperature=0.7),
    )


def original_design_rollout(teacher: Any, student: Any, templates: Any, rows: list[dict], settings: Any,
                            seed: int) -> None:
    """The per-replica design: each of the G replicas of a prompt gets its own baseline, probe, teaching and
    solution (one sample each), all batched per stage as the original did."""
    from rcl.prompts import extract_teaching, student_messages, teacher_messages
    from rcl.rl.rollout import encode_prompts

    replicas = [r["question"] for r in rows for _ in range(settings.num_generations)]
    one = replace(settings.student, n=1)
    s_tok, t_tok = student.tokenizer, teacher.tokenizer
    student.generate(encode_prompts(s_tok, [student_messages(templates, "baseline", q) for q in replicas]),
                     replace(one, seed=seed))
    probes = student.generate(encode_prompts(s_tok, [student_messages(templates, "probe", q) for q in replicas]),
                              replace(one, max_tokens=settings.max_probe_tokens, seed=seed + 1))
    approaches = [p[0].text.strip() for p in probes]
    teachings = teacher.generate(
        encode_prompts(t_tok, [teacher_messages(templates, q, a) for q, a in zip(replicas, approaches)]),
        replace(settings.policy, n=1, seed=seed + 2),
    )
    shown = [extract_teaching(t[0].text, settings.missing_teaching).text for t in teachings]
    student.generate(
        encode_prompts(s_tok, [student_messages(templates, "with_teaching", q, t) for q, t in zip(replicas, shown)]),
        replace(one, seed=seed + 3),
    )


def count_generations(cfg: RolloutBenchConfig) -> dict:
    """Both designs on the same prompts and engines (tiny untrained teacher and student), counted per prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rcl.engines import HFEngine
    from rcl.prompts import PromptTemplates
    from rcl.rewards import get_reward
    from rcl.rl.rollout import RolloutRunner
    from rcl.tiny_models import resolve_model
    from experiments.benchmarks.grpo_vs_trl import GRPOBenchConfig, prompt_rows

    folder = resolve_model(cfg.preset)
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    rows = prompt_rows(GRPOBenchConfig(seed=cfg.seed), cfg.prompts)[0][: cfg.prompts]
    settings = settings_for(cfg)
    templates = PromptTemplates()
    out = {}
    for design in ("warm-up", "rcl", "original"):
        teacher = CountingEngine(HFEngine(AutoModelForCausalLM.from_pretrained(folder), tok))
        student = CountingEngine(HFEngine(AutoModelForCausalLM.from_pretrained(folder), tok))
        if design in ("warm-up", "rcl"):
            reward = {"adaptive_teaching": get_reward("adaptive_teaching")}
            RolloutRunner(teacher, student, templates, reward, {"adaptive_teaching": 1.0}).run(rows, cfg.seed, settings)
        else:
            original_design_rollout(teacher, student, templates, rows, settings, cfg.seed)
        if design == "warm-up":  # the first generate of a process pays one-off costs
            continue
        s, t = student.totals(), teacher.totals()
        out[design] = {
            "student_generations": s["completions"] / cfg.prompts,
            "teacher_generations": t["completions"] / cfg.prompts,
            "student_tokens": s["tokens"] / cfg.prompts,
            "teacher_tokens": t["tokens"] / cfg.prompts,
            "student_seconds": s["seconds"],
            "teacher_seconds": t["seconds"],
            "student_calls": len(student.calls),
        }
    return out


def loop_run(cfg: RolloutBenchConfig, out_dir: Path, server_url: str | None = None) -> list[dict]:
    """An adaptive-teaching RL run of `cfg.steps` steps; returns its training rows of history.jsonl (with
    `sync/seconds` from the CSV log when the policy is served)."""
    from data_modules.teacher_student import TeacherStudentDataModule
    from rcl.optim import OptimizerArgs
    from rcl.rl.args import (EngineArgs, EnginesArgs, EvalArgs, GenerationArgs, GRPOArgs, LoggingArgs, ModelArgs,
                             RewardArgs, TrainerArgs)
    from rcl.rl.loop import setup
    from rcl.tiny_models import resolve_model

    model = ModelArgs(model_name_or_path=resolve_model(cfg.preset))
    teacher_engine = EngineArgs(backend="server", urls=[server_url]) if server_url else EngineArgs()
    setup(
        data=TeacherStudentDataModule(dataset="synthetic", schema="atlas_rl", synthetic_size=400, val_size=8),
        trainer=TrainerArgs(accelerator="cpu", devices=1, max_steps=cfg.steps, seed=cfg.seed, out_dir=str(out_dir),
                            loggers=["csv"], export_hf=False),
        teacher=model,
        student=model,
        grpo=GRPOArgs(protocol="adaptive_teaching", prompts_per_step=cfg.prompts, num_generations=cfg.num_generations,
                      micro_batch_size=cfg.prompts * cfg.num_generations, baseline_samples=cfg.baseline_samples,
                      student_samples=cfg.student_samples, max_probe_tokens=cfg.probe_tokens),
        generation=GenerationArgs(temperature=1.0, max_completion_length=cfg.policy_tokens,
                                  student_max_tokens=cfg.student_tokens),
        reward=RewardArgs(),
        optimizer=OptimizerArgs(learning_rate=1e-5, schedule="constant"),
        eval=EvalArgs(every_n_steps=0, num_prompts=1, at_start=False),
        engines=EnginesArgs(teacher=teacher_engine, sync_bucket_mb=64.0),
        logging=LoggingArgs(sample_every_n_steps=0),
    )
    rows = [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward" in r]
    sync = {}
    for path in (out_dir / "csv").rglob("metrics.csv"):
        with path.open() as f:
            for rec in csv.DictReader(f):
                if rec.get("sync/seconds"):
                    sync[int(rec["step"])] = float(rec["sync/seconds"])
    for r in train:
        if r["step"] in sync:
            r["sync/seconds"] = sync[r["step"]]
    return train


STEP_KEYS = ("time/generation/policy", "time/generation/student", "time/reward", "time/training", "sync/seconds")


def step_split(rows: list[dict]) -> dict[str, float]:
    """Mean seconds per part over the steps after the first (a warm-up)."""
    timed = rows[1:] or rows
    return {k: sum(r.get(k, 0.0) for r in timed) / len(timed) for k in STEP_KEYS}


def run_rollout_benchmark(cfg: RolloutBenchConfig, with_server: bool = True, log=print) -> dict:
    log(f"[rollout] counting generations per prompt ({cfg.preset})")
    counts = count_generations(cfg)
    splits = {}
    with tempfile.TemporaryDirectory(prefix="rcl-rollout-") as tmp:
        log("[rollout] in-process RL run")
        splits["in-process policy"] = step_split(loop_run(cfg, Path(tmp) / "in_process"))
        if with_server:
            from experiments.benchmarks.engine import LocalServer
            from rcl.tiny_models import resolve_model

            log("[rollout] RL run with the policy on a local hf server")
            with LocalServer(resolve_model(cfg.preset)) as server:
                splits["policy on hf server"] = step_split(loop_run(cfg, Path(tmp) / "server", server.url))
    return {"config": asdict(cfg), "formula": formula(cfg), "counted": counts, "step_split": splits}


def tables(result: dict) -> str:
    cfg = result["config"]
    f = result["formula"]
    rows = []
    for design, label in (("rcl", "rcl (shared baseline + probe)"), ("original", "original (per replica)")):
        c = result["counted"][design]
        rows.append([label, f[design]["student"], c["student_generations"], f[design]["teacher"],
                     c["teacher_generations"], c["student_tokens"], c["teacher_tokens"],
                     c["student_seconds"] + c["teacher_seconds"]])
    text = (f"Adaptive-teaching rollout per prompt ({cfg['preset']}, G={cfg['num_generations']}, "
            f"k={cfg['baseline_samples']}, m={cfg['student_samples']}; student max {cfg['student_tokens']} tokens, "
            f"probe max {cfg['probe_tokens']}, teacher max {cfg['policy_tokens']}; {cfg['prompts']} prompts)\n")
    text += format_table(("design", "student gens (formula)", "student gens (counted)", "teacher gens (formula)",
                          "teacher gens (counted)", "student tokens", "teacher tokens", "gen s (all prompts)"), rows)
    split_rows = []
    for name, split in result["step_split"].items():
        split_rows.append([name, *(split[k] for k in STEP_KEYS), sum(split.values())])
    text += f"\n\nSeconds per RL step (mean over steps 2..{cfg['steps']})\n"
    text += format_table(("run", "policy gen", "student gen", "reward", "training", "weight sync", "total"),
                         split_rows)
    return text
