"""The contention slowdown, reproduced: a training process's step time alone and beside a busy neighbour, for
several torch thread counts on each side.

The victim runs rcl's own step on tiny-1m (HFEngine generation of a GRPO group, then the loss's forward/backward)
for `--steps` steps; the neighbour runs the same workload in a loop for as long as the victim runs. When the two
processes ask for more threads than there are cores, OpenMP's threads wait for each other at every parallel region
(each spins before it sleeps), which is what the suspected 20x slowdown of a 2-thread trainer beside a 2-thread
benchmark on 2 cores looks like. `trainer.num_threads` (default: the cores this process may use, divided by the
training processes on the node) keeps a run inside its share.

    python -m experiments.benchmarks contention --steps 10 --victim-threads 1 2 --neighbour-threads 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.benchmarks.common import ROOT, format_table, worker_env


@dataclass
class ContentionConfig:
    preset: str = "tiny-1m"
    steps: int = 10
    victim_threads: list[int] = field(default_factory=lambda: [1, 2])
    neighbour_threads: list[int] = field(default_factory=lambda: [0, 1, 2])
    """0: no neighbour."""


def config_from(args: argparse.Namespace) -> ContentionConfig:
    return ContentionConfig(preset=args.preset, steps=args.steps, victim_threads=args.victim_threads,
                            neighbour_threads=args.neighbour_threads)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ContentionConfig()
    p.add_argument("--preset", default=d.preset)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--victim-threads", type=int, nargs="+", default=d.victim_threads)
    p.add_argument("--neighbour-threads", type=int, nargs="+", default=d.neighbour_threads)


def workload_steps(preset: str, threads: int, steps: int) -> list[float]:
    """Seconds per step of generate-then-train on `preset` with `threads` torch threads (steps <= 0: forever)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rcl.engines import HFEngine, SamplingParams
    from rcl.grpo import completion_logprobs
    from rcl.tiny_models import resolve_model

    torch.set_num_threads(threads)
    path = resolve_model(preset)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    engine = HFEngine(model, tok)
    prompt = tok("What is 12 + 30? Answer:", add_special_tokens=False)["input_ids"]
    times, k = [], 0
    while steps <= 0 or k < steps:
        start = time.perf_counter()
        group = engine.generate([prompt] * 8, SamplingParams(max_tokens=32, n=8, temperature=1.0, seed=k))
        rows = [prompt + c.token_ids + [tok.eos_token_id] * (33 - len(c.token_ids)) for g in group for c in g]
        ids = torch.tensor(rows)
        logp = completion_logprobs(model, ids, torch.ones_like(ids), 33)
        (-logp.mean()).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
        k += 1
    return times


def _worker(threads: int, steps: int, preset: str) -> subprocess.Popen:
    env = {**worker_env(), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "experiments.benchmarks.contention", "--worker", "--threads", str(threads),
           "--steps", str(steps), "--preset", preset]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_pair(cfg: ContentionConfig, victim: int, neighbour: int) -> dict:
    other = _worker(neighbour, 0, cfg.preset) if neighbour else None
    try:
        if other is not None:
            time.sleep(5.0)  # the neighbour is past its start-up and computing
        proc = _worker(victim, cfg.steps, cfg.preset)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"contention worker failed: {err[-2000:]}")
        times = json.loads(out.strip().splitlines()[-1])["step_s"][1:]  # the first step warms up
    finally:
        if other is not None:
            other.terminate()
            other.wait(timeout=30)
    return {"victim_threads": victim, "neighbour_threads": neighbour, "median_step_s": statistics.median(times),
            "max_step_s": max(times)}


def run_benchmark(cfg: ContentionConfig) -> dict:
    return {"config": vars(cfg), "cores": os.cpu_count(),
            "results": [run_pair(cfg, v, n) for v in cfg.victim_threads for n in cfg.neighbour_threads]}


def table(result: dict) -> str:
    alone = {r["victim_threads"]: r["median_step_s"] for r in result["results"] if r["neighbour_threads"] == 0}
    rows = [[r["victim_threads"], r["neighbour_threads"] or "none", r["median_step_s"], r["max_step_s"],
             r["median_step_s"] / alone[r["victim_threads"]] if r["victim_threads"] in alone else ""]
            for r in result["results"]]
    return (f"{result['cores']} cores\n" +
            format_table(["victim threads", "neighbour threads", "median step s", "max step s", "x alone"], rows))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--preset", default="tiny-1m")
    a = p.parse_args()
    print(json.dumps({"step_s": workload_steps(a.preset, a.threads, a.steps)}), flush=True)


if __name__ == "__main__":
    main()
