"""Synchronous against asynchronous GRPO on CPU: samples per second and the reward curve over the same samples.

One `rcl serve` (hf engine) pinned to one core with `taskset`, the trainer (direct quickstart recipe, the policy on
that server) pinned to another, for `grpo.max_off_policy_steps` 0 (synchronous), 1 and 2. Samples/s is the policy
completions of steps 2..S over the summed `time/step` of those steps (step 1 carries start-up). The rewards of
every setting are plotted against samples seen, in one figure.

    python -m experiments.benchmarks async --steps 40 --server-core 0 --trainer-core 1

`--recipe adaptive` runs the adaptive-teaching quickstart instead (`quickstart_rcl.yaml`, its own reward): the teacher
(the policy, `--preset`) and the frozen student (`--student`) each on an `rcl serve` pinned to the server core, so
all generation shares one core and training has the other:

    python -m experiments.benchmarks async --recipe adaptive --preset runs/quickstart_sft/hf_model \
        --student runs/quickstart_student_sft/hf_model --steps 30 --name adaptive

On GPUs (one vLLM server on GPU 0, training on GPU 1; the model must be a local folder, the machine is offline):

    python -m experiments.benchmarks async --preset /models/Qwen2.5-0.5B-Instruct --engine vllm --accelerator cuda \
        --server-core -1 --trainer-core -1 --steps 30 --max-completion-length 256 --dtype bfloat16

It adds generated tokens/s per GPU (policy tokens per step / step time / 2 GPUs), a training MFU estimate
(6 x parameters x policy tokens / step time / the trainer GPU's `--peak-tflops`), and the mean weight-push seconds.
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
    """The policy (the teacher under `adaptive`): a tiny preset or a local HF folder."""
    recipe: str = "direct"
    """direct (quickstart_direct.yaml, dense `bench_digits` reward) or adaptive (quickstart_rcl.yaml, its reward)."""
    student: str = ""
    """The frozen student of `adaptive` (default: the policy's model)."""
    steps: int = 40
    prompts_per_step: int = 8
    num_generations: int = 8
    max_completion_length: int = 32
    learning_rate: float = 1e-4
    settings: list[int] = field(default_factory=lambda: [0, 1, 2])
    server_core: int = 0
    trainer_core: int = 1
    seed: int = 0
    engine: str = "hf"
    """Server engine: hf (CPU) or vllm (GPU 0)."""
    accelerator: str = "cpu"
    """Trainer: cpu, or cuda (GPU 1, or GPU 0 beside the server when there is one GPU)."""
    dtype: str = "float32"
    peak_tflops: float = 989.0
    """Dense bf16 peak of the trainer's GPU for the MFU estimate (H100/H200 SXM: 989)."""


def _pinned(core: int, cmd: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") and core >= 0 else []) + cmd


RECIPES = {"direct": "quickstart_direct.yaml", "adaptive": "quickstart_rcl.yaml"}


def trainer_command(cfg: AsyncBenchConfig, urls: dict[str, str], off_policy: int, out: Path) -> list[str]:
    """The trainer's CLI: the recipe with the benchmark's sizes, the policy (and under `adaptive` the student) on
    the given server URLs."""
    if cfg.recipe not in RECIPES:
        raise SystemExit(f"--recipe must be one of {sorted(RECIPES)}, got {cfg.recipe!r}")
    recipe = [
        "--reward.functions", "{bench_digits: 1.0}", "--reward.kwargs", "{}"] if cfg.recipe == "direct" else [
        "--student.model_name_or_path", cfg.student or cfg.preset, "--student.dtype", cfg.dtype,
        "--engines.student.backend", "server", "--engines.student.urls", f"[{urls['student']}]"]
    return [sys.executable, "-m", "experiments.benchmarks.async_throughput", "--trainer", "--config",
            str(ROOT / "lightning_configs" / RECIPES[cfg.recipe]),
            "--teacher.model_name_or_path", cfg.preset, "--trainer.out_dir", str(out), "--trainer.loggers", "[csv]",
            "--trainer.max_steps", str(cfg.steps), "--trainer.seed", str(cfg.seed), "--trainer.export_hf", "false",
            "--grpo.prompts_per_step", str(cfg.prompts_per_step), "--grpo.num_generations", str(cfg.num_generations),
            "--grpo.micro_batch_size", str(cfg.prompts_per_step * cfg.num_generations),
            "--grpo.max_off_policy_steps", str(off_policy), "--grpo.importance_sampling", "auto",
            "--generation.max_completion_length", str(cfg.max_completion_length),
            "--optimizer.learning_rate", str(cfg.learning_rate), *recipe,
            "--eval.at_start", "false", "--eval.every_n_steps", "0", "--eval.num_prompts", "8",
            "--logging.sample_every_n_steps", "0",
            "--engines.teacher.backend", "server", "--engines.teacher.urls", f"[{urls['teacher']}]",
            "--trainer.accelerator", cfg.accelerator, "--teacher.dtype", cfg.dtype,
            "--trainer.precision", "bf16-true" if cfg.dtype == "bfloat16" else "32-true",
            *(["--engines.verify_tolerance", "0.05"] if cfg.engine == "vllm" else [])]


def _start_server(cfg: AsyncBenchConfig, model: str, port: int, env: dict) -> subprocess.Popen:
    import requests

    cmd = _pinned(cfg.server_core, [sys.executable, "-m", "rcl", "serve", "--model", model, "--engine", cfg.engine,
                                    "--port", str(port), "--seed", "0", "--log-level", "warning", "--dtype", cfg.dtype])
    if cfg.engine == "vllm":
        cmd += ["--gpu-memory-utilization", "0.5" if _gpu_count() < 2 else "0.85"]
        env = {**env, "CUDA_VISIBLE_DEVICES": "0"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health/", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the benchmark's server did not become healthy")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def parameter_count(model: str) -> int:
    """Parameters of `model` without loading its weights (built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rcl.tiny_models import resolve_model

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(model)))
    return sum(p.numel() for p in lm.parameters())


def run_setting(cfg: AsyncBenchConfig, off_policy: int) -> dict:
    env = {**worker_env(), "OMP_NUM_THREADS": "1"}
    models = {"teacher": cfg.preset} | ({"student": cfg.student or cfg.preset} if cfg.recipe == "adaptive" else {})
    servers, urls = [], {}
    try:
        for role, model in models.items():
            port = _free_port()
            servers.append(_start_server(cfg, model, port, env))
            urls[role] = f"http://127.0.0.1:{port}"
        if cfg.accelerator == "cuda":
            env = {**env, "CUDA_VISIBLE_DEVICES": "1" if _gpu_count() > 1 else "0"}
        with tempfile.TemporaryDirectory(prefix="rcl-async-") as tmp:
            out = Path(tmp) / "run"
            cmd = _pinned(cfg.trainer_core, trainer_command(cfg, urls, off_policy, out))
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"trainer failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    train = [r for r in rows if "time/step" in r]
    per_step = cfg.prompts_per_step * cfg.num_generations
    timed = train[1:]
    seconds = sum(r["time/step"] for r in timed)
    tokens = sum(r.get("tokens/policy", 0.0) for r in timed) / seconds
    pushes = [r["sync/seconds"] for r in timed if "sync/seconds" in r]
    gpus = 2 if cfg.accelerator == "cuda" and cfg.engine == "vllm" else 0
    return {
        "policy_tokens_per_s": tokens,
        "tokens_per_s_per_gpu": tokens / gpus if gpus else None,
        "mfu": 6 * parameter_count(cfg.preset) * tokens / (cfg.peak_tflops * 1e12) if gpus else None,
        "push_s": sum(pushes) / len(pushes) if pushes else None,
        "max_off_policy_steps": off_policy,
        "samples_per_s": per_step * len(timed) / seconds,
        "step_s": seconds / len(timed),
        "trainer_wait_s": sum(r.get("time/trainer_wait", 0.0) for r in timed) / len(timed),
        "server_wait_s": sum(r.get("time/server_wait", 0.0) for r in timed) / len(timed),
        # a push first drains the rollouts in flight: when generation is the bottleneck the trainer waits here
        "push_wait_s": sum(r.get("time/push_wait", 0.0) for r in timed) / len(timed),
        "generation_s": sum(v for r in timed for k, v in r.items() if k.startswith("time/generation")) / len(timed),
        "training_s": sum(r.get("time/training", 0.0) for r in timed) / len(timed),
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
    return {"config": vars(cfg), "results": [run_setting(cfg, n) for n in cfg.settings]}


def table(results: list[dict]) -> str:
    sync = next((r for r in results if r["max_off_policy_steps"] == 0), None)
    rows = [[r["max_off_policy_steps"], r["samples_per_s"], (r["samples_per_s"] / sync["samples_per_s"]) if sync else
             "", r["step_s"], r.get("generation_s", ""), r.get("training_s", ""), r["trainer_wait_s"], r.get("push_wait_s", ""), r["server_wait_s"], r["staleness_mean"],
             sum(r["rewards"][-10:]) / len(r["rewards"][-10:]), r.get("push_s") or "",
             r.get("tokens_per_s_per_gpu") or "", r.get("mfu") or ""] for r in results]
    return format_table(["max_off_policy_steps", "samples/s", "x sync", "step s", "gen s", "train s",
                         "trainer wait s", "push wait s",
                         "server wait s",
                         "staleness", "reward (last 10)", "push s", "tokens/s/GPU", "MFU"], rows)


def plot(results: list[dict], path: Path, reward: str = "digits") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        label = "sync" if r["max_off_policy_steps"] == 0 else f"max_off_policy_steps {r['max_off_policy_steps']}"
        ax.plot(r["samples"], r["rewards"], label=label)
    ax.set_xlabel("policy completions trained on")
    ax.set_ylabel(f"mean reward ({reward})")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = AsyncBenchConfig()
    p.add_argument("--preset", default=defaults.preset)
    p.add_argument("--recipe", choices=tuple(RECIPES), default=defaults.recipe)
    p.add_argument("--student", default=defaults.student, help="adaptive: the frozen student (default: --preset)")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--settings", type=int, nargs="+", default=defaults.settings, help="max_off_policy_steps values")
    p.add_argument("--server-core", type=int, default=defaults.server_core, help="-1: no pinning")
    p.add_argument("--trainer-core", type=int, default=defaults.trainer_core, help="-1: no pinning")
    p.add_argument("--max-completion-length", type=int, default=defaults.max_completion_length)
    p.add_argument("--engine", choices=("hf", "vllm"), default=defaults.engine)
    p.add_argument("--accelerator", choices=("cpu", "cuda"), default=defaults.accelerator)
    p.add_argument("--dtype", default=defaults.dtype)
    p.add_argument("--peak-tflops", type=float, default=defaults.peak_tflops)


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
