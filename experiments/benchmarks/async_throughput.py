"""Synchronous against asynchronous GRPO on CPU: samples per second and the reward curve over the same samples.

One `rcl serve` (hf engine) pinned to one core with `taskset`, the trainer (direct quickstart recipe, the policy on
that server) pinned to another, for `grpo.max_off_policy_steps` 0 (synchronous), 1 and 2. Samples/s is the policy
completions of steps 2..S over the summed `time/step` of those steps (step 1 carries start-up). The rewards of
every setting are plotted against samples seen, in one figure.

    python -m experiments.benchmarks async --steps 40 --server-core 0 --trainer-core 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.benchmarks.common import ROOT, format_table, worker_env


@dataclass
class AsyncBenchConfig:
    preset: str = "tiny-1m"
    steps: int = 40
    prompts_per_step: int = 8
    num_generations: int = 8
    max_completion_length: int = 32
    learning_rate: float = 1e-4
    settings: list[int] = field(default_factory=lambda: [0, 1, 2])
    server_core: int = 0
    trainer_core: int = 1
    seed: int = 0


def _pinned(core: int, cmd: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") and core >= 0 else []) + cmd


def trainer_command(cfg: AsyncBenchConfig, url: str, off_policy: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.benchmarks.async_throughput", "--trainer", "--config", str(ROOT / "lightning_configs" / "quickstart_direct.yaml"),
            "--teacher.model_name_or_path", cfg.preset, "--trainer.out_dir", str(out), "--trainer.loggers", "[csv]",
            "--trainer.max_steps", str(cfg.steps), "--trainer.seed", str(cfg.seed), "--trainer.export_hf", "false",
            "--grpo.prompts_per_step", str(cfg.prompts_per_step), "--grpo.num_generations", str(cfg.num_generations),
            "--grpo.micro_batch_size", str(cfg.prompts_per_step * cfg.num_generations),
            "--grpo.max_off_policy_steps", str(off_policy), "--grpo.importance_sampling", "auto",
            "--generation.max_completion_length", str(cfg.max_completion_length),
            "--optimizer.learning_rate", str(cfg.learning_rate),
            "--reward.functions", "{bench_digits: 1.0}", "--reward.kwargs", "{}",
            "--eval.at_start", "false", "--eval.every_n_steps", "0", "--eval.num_prompts", "8",
            "--logging.sample_every_n_steps", "0",
            "--engines.teacher.backend", "server", "--engines.teacher.urls", f"[{url}]"]


def _start_server(cfg: AsyncBenchConfig, port: int, env: dict) -> subprocess.Popen:
    import requests

    cmd = _pinned(cfg.server_core, [sys.executable, "-m", "rcl", "serve", "--model", cfg.preset, "--engine", "hf",
                                    "--port", str(port), "--seed", "0", "--log-level", "warning"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health/", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the benchmark's server did not become healthy")


def run_setting(cfg: AsyncBenchConfig, off_policy: int, port: int) -> dict:
    env = {**worker_env(), "OMP_NUM_THREADS": "1"}
    server = _start_server(cfg, port, env)
    try:
        with tempfile.TemporaryDirectory(prefix="rcl-async-") as tmp:
            out = Path(tmp) / "run"
            cmd = _pinned(cfg.trainer_core, trainer_command(cfg, f"http://127.0.0.1:{port}", off_policy, out))
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"trainer failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    finally:
        server.terminate()
        server.wait(timeout=30)
    train = [r for r in rows if "time/step" in r]
    per_step = cfg.prompts_per_step * cfg.num_generations
    timed = train[1:]
    seconds = sum(r["time/step"] for r in timed)
    return {
        "max_off_policy_steps": off_policy,
        "samples_per_s": per_step * len(timed) / seconds,
        "step_s": seconds / len(timed),
        "trainer_wait_s": sum(r.get("time/trainer_wait", 0.0) for r in timed) / len(timed),
        "server_wait_s": sum(r.get("time/server_wait", 0.0) for r in timed) / len(timed),
        "staleness_mean": sum(r["staleness/mean"] for r in timed) / len(timed),
        "rewards": [r["reward"] for r in train],
        "samples": [per_step * r["step"] for r in train],
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_benchmark(cfg: AsyncBenchConfig) -> dict:
    """Each setting on a fresh server (same seed), one after the other."""
    return {"config": vars(cfg), "results": [run_setting(cfg, n, _free_port()) for n in cfg.settings]}


def table(results: list[dict]) -> str:
    sync = next((r for r in results if r["max_off_policy_steps"] == 0), None)
    rows = [[r["max_off_policy_steps"], r["samples_per_s"], (r["samples_per_s"] / sync["samples_per_s"]) if sync else
             "", r["step_s"], r["trainer_wait_s"], r["server_wait_s"], r["staleness_mean"],
             sum(r["rewards"][-10:]) / len(r["rewards"][-10:])] for r in results]
    return format_table(["max_off_policy_steps", "samples/s", "x sync", "step s", "trainer wait s", "server wait s",
                         "staleness", "reward (last 10)"], rows)


def plot(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        label = "sync" if r["max_off_policy_steps"] == 0 else f"max_off_policy_steps {r['max_off_policy_steps']}"
        ax.plot(r["samples"], r["rewards"], label=label)
    ax.set_xlabel("policy completions trained on")
    ax.set_ylabel("mean reward (digits)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = AsyncBenchConfig()
    p.add_argument("--preset", default=defaults.preset)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--settings", type=int, nargs="+", default=defaults.settings, help="max_off_policy_steps values")
    p.add_argument("--server-core", type=int, default=defaults.server_core, help="-1: no pinning")
    p.add_argument("--trainer-core", type=int, default=defaults.trainer_core, help="-1: no pinning")
    p.add_argument("--max-completion-length", type=int, default=defaults.max_completion_length)


def train(argv: list[str]) -> None:
    """The trainer's process: rcl's RL CLI with the benchmark's dense `bench_digits` reward registered."""
    from experiments.benchmarks.grpo_vs_trl import _register_digits_reward
    from rcl.rl.loop import cli_main

    _register_digits_reward()
    cli_main("fit", argv)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--trainer"]:
        raise SystemExit("usage: python -m experiments.benchmarks async ... (this module's own entry is the trainer)")
    train(sys.argv[2:])
