"""rcl's GRPO loop (`direct` protocol) against TRL's `GRPOTrainer`, side by side on the same tiny model on CPU.

    python -m experiments.benchmarks grpo --preset tiny-1m --reps 3

Both load the same local HF folder (`rcl.tiny_models.resolve_model`), train on the same synthetic questions rendered
with the same chat template, score with rcl's `correctness` reward (wrapped as a TRL reward function), and use the
same G, completions per optimizer step (one micro-batch), max completion length, learning rate (constant), beta 0,
loss type dapo, temperature, num_iterations 1, gradient clipping 1.0, no gradient checkpointing, fp32. Both stop a
completion at eos (an untrained model almost never samples it, so nearly every completion runs to the full length;
the table shows the measured mean lengths). Repetitions alternate (rcl, TRL, rcl, TRL, ...), each in a fresh process
so peak RSS is per run; each run's first optimizer step is a warm-up and is not timed.

Seconds per step are wall time between consecutive optimizer-step ends (everything a user waits for: sampling,
reward, loss, backward, optimizer, logging). Generation and reward seconds are timed around the same calls in both
(rcl: its rollout timings; TRL: `_generate_single_turn` and `_calculate_rewards`); "train+other" is the rest.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments.benchmarks.common import (
    format_table,
    load_note,
    run_worker,
    spread,
    write_worker_result,
)

MODULE = "experiments.benchmarks.grpo_vs_trl"
FRAMEWORKS = ("rcl", "trl")


@dataclass
class GRPOBenchConfig:
    preset: str = "tiny-1m"
    num_generations: int = 8
    batch_size: int = 64
    """Completions per optimizer step (prompts per step x G), one micro-batch in both."""
    max_completion_length: int = 32
    learning_rate: float = 1e-5
    temperature: float = 1.0
    steps: int = 6
    """Optimizer steps per run; the first is the warm-up."""
    seed: int = 42
    threads: int = 0
    """torch intra-op threads in both workers (0: torch's default)."""
    reward: str = "correctness"
    """correctness (rcl's verifier; an untrained model is almost never right, so most groups have zero advantage)
    or digits (share of digit characters: differs between random completions, so nearly every row is trained)."""

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.num_generations

    def validate(self) -> None:
        if self.batch_size % self.num_generations:
            raise SystemExit(f"batch size {self.batch_size} must be a multiple of G={self.num_generations}")
        if self.steps < 2:
            raise SystemExit("--steps must be >= 2 (the first step is a warm-up)")


def prompt_rows(cfg: GRPOBenchConfig, n: int) -> tuple[list[dict], Any]:
    """The training questions both frameworks see, and the rcl data module they come from."""
    from data_modules.teacher_student import TeacherStudentDataModule

    data = TeacherStudentDataModule(dataset="synthetic", schema="atlas_rl", synthetic_size=max(400, 2 * n),
                                    synthetic_seed=0, val_size=8, seed=cfg.seed)
    return list(data.rl_dataset("train")), data


def _register_digits_reward() -> None:
    from rcl.rewards import available_rewards, register_reward

    if "bench_digits" in available_rewards():
        return

    @register_reward("bench_digits")
    class DigitShare:
        """Share of digit characters in the completion: a dense reward, so GRPO groups rarely tie."""

        def __call__(self, samples):
            return [sum(ch.isdigit() for ch in s.completion) / max(len(s.completion), 1) for s in samples]


def reward_name(cfg: GRPOBenchConfig) -> str:
    if cfg.reward == "digits":
        _register_digits_reward()
        return "bench_digits"
    if cfg.reward != "correctness":
        raise SystemExit(f"--reward must be correctness or digits, got {cfg.reward!r}")
    return "correctness"


def per_step_summary(ends: list[float], steps: list[dict], batch_size: int) -> dict:
    """Drop the warm-up step; intervals between step ends are the step times."""
    intervals = [b - a for a, b in zip(ends, ends[1:])]
    timed = steps[1:]
    gen = statistics.fmean(s["generation_s"] for s in timed)
    reward = statistics.fmean(s["reward_s"] for s in timed)
    step_s = statistics.fmean(intervals)
    tokens = statistics.fmean(s["tokens"] for s in timed)
    zero_std = [s["zero_std"] for s in timed if s.get("zero_std") is not None]
    return {
        "zero_std_groups": statistics.fmean(zero_std) if zero_std else None,
        "step_s": step_s,
        "generation_s": gen,
        "reward_s": reward,
        "train_other_s": step_s - gen - reward,
        "tokens_per_step": tokens,
        "mean_length": tokens / batch_size,
        "completions_per_s": batch_size / step_s,
        "generated_tokens_per_s": tokens / gen,
        "trained_tokens_per_s": tokens / max(step_s - gen - reward, 1e-9),
        "step_intervals": intervals,
    }


# ----------------------------------------------------------------------------------------------------- rcl worker
def run_rcl(cfg: GRPOBenchConfig, out_dir: Path) -> dict:
    from callbacks.base import FabricCallback
    from rcl.optim import OptimizerArgs
    from rcl.rl.args import EvalArgs, GenerationArgs, GRPOArgs, LoggingArgs, ModelArgs, RewardArgs, TrainerArgs
    from rcl.rl.loop import setup
    from rcl.tiny_models import resolve_model

    class StepClock(FabricCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.steps: list[dict] = []

        def on_train_batch_end(self, rollout=None, metrics=None, **kwargs) -> None:
            self.ends.append(time.perf_counter())
            self.steps.append({
                "generation_s": metrics["time/generation/policy"],
                "reward_s": metrics["time/reward"],
                "tokens": sum(len(c.token_ids) for c in rollout.completions),
                "zero_std": metrics["frac_reward_zero_std"],
            })

    clock = StepClock()
    _, data = prompt_rows(cfg, cfg.steps * cfg.prompts_per_step)
    model = ModelArgs(model_name_or_path=resolve_model(cfg.preset))
    setup(
        data=data,
        trainer=TrainerArgs(accelerator="cpu", devices=1, max_steps=cfg.steps, seed=cfg.seed, out_dir=str(out_dir),
                            loggers=[], export_hf=False, num_threads=cfg.threads),
        teacher=model,
        student=model,
        grpo=GRPOArgs(protocol="direct", prompts_per_step=cfg.prompts_per_step, num_generations=cfg.num_generations,
                      micro_batch_size=cfg.batch_size, num_iterations=1, beta=0.0, loss_type="dapo"),
        generation=GenerationArgs(temperature=cfg.temperature, max_completion_length=cfg.max_completion_length),
        reward=RewardArgs(functions={reward_name(cfg): 1.0}, kwargs={}),
        optimizer=OptimizerArgs(learning_rate=cfg.learning_rate, schedule="constant", max_grad_norm=1.0),
        eval=EvalArgs(every_n_steps=0, num_prompts=1, at_start=False),
        logging=LoggingArgs(sample_every_n_steps=0),
        callbacks=[clock],
    )
    return per_step_summary(clock.ends, clock.steps, cfg.batch_size)


# ----------------------------------------------------------------------------------------------------- TRL worker
def reward_for_trl(name: str, task=None, reward_kwargs: dict | None = None):
    """An rcl reward with TRL's reward-function signature; answers are scored by `task` (default: arithmetic)."""
    from rcl.rewards import RolloutSample, get_reward
    from rcl.tasks import get_task

    reward = get_reward(name, **(reward_kwargs or {}))
    task = task if task is not None else get_task("arithmetic")

    def rcl_reward(prompts, completions, ground_truth, **kwargs) -> list[float]:
        samples = [RolloutSample(question="", ground_truth=gt, completion=c, completion_tokens=0,
                                 score=task.score(c, {"ground_truth": gt}))
                   for c, gt in zip(completions, ground_truth)]
        return reward(samples)

    rcl_reward.__name__ = name
    return rcl_reward


def trl_config(cfg: GRPOBenchConfig, out_dir: Path, **overrides: Any):
    """TRL's config with the benchmark's shared settings; `overrides` set (or replace) other GRPOConfig fields."""
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(out_dir),
        use_cpu=True,
        use_vllm=False,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,  # TRL 1.16 defaults to True; rcl's loop does not checkpoint by default
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        max_completion_length=cfg.max_completion_length,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="dapo",
        temperature=cfg.temperature,
        num_iterations=1,
        max_steps=cfg.steps,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=cfg.seed,
    )
    return GRPOConfig(**{**settings, **overrides})


def run_trl(cfg: GRPOBenchConfig, out_dir: Path) -> dict:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from rcl.prompts import PromptTemplates, render_prompt, student_messages
    from rcl.tiny_models import resolve_model

    folder = resolve_model(cfg.preset)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    rows, _ = prompt_rows(cfg, cfg.steps * cfg.prompts_per_step)
    templates = PromptTemplates()
    dataset = datasets.Dataset.from_list([
        {"prompt": render_prompt(tokenizer, student_messages(templates, "baseline", r["question"])),
         "ground_truth": r["ground_truth"]}
        for r in rows
    ])
    steps: list[dict] = []
    ends: list[float] = []

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, *args, **kwargs):
            start = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(*args, **kwargs)
            steps.append({"generation_s": time.perf_counter() - start, "reward_s": 0.0,
                          "tokens": sum(len(c) for c in completion_ids)})
            return completion_ids, logprobs

        def _calculate_rewards(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._calculate_rewards(*args, **kwargs)
            steps[-1]["reward_s"] += time.perf_counter() - start
            return out

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "frac_reward_zero_std" in logs and len(steps) >= state.global_step > 0:
                steps[state.global_step - 1]["zero_std"] = float(logs["frac_reward_zero_std"])

    trainer = TimedGRPOTrainer(
        model=folder,
        reward_funcs=[reward_for_trl(reward_name(cfg))],
        args=trl_config(cfg, out_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    trainer.train()
    if len(steps) != cfg.steps:
        raise RuntimeError(f"TRL generated {len(steps)} times in {cfg.steps} steps; expected once per step")
    return per_step_summary(ends, steps, cfg.batch_size)


# ------------------------------------------------------------------------------------------------------- harness
def config_args(cfg: GRPOBenchConfig) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in asdict(cfg).items()]


def run_benchmark(cfg: GRPOBenchConfig, reps: int, log=print) -> dict:
    """Alternate fresh rcl and TRL processes `reps` times each; return every run and the summary rows."""
    cfg.validate()
    runs: dict[str, list[dict]] = {fw: [] for fw in FRAMEWORKS}
    for rep in range(reps):
        for fw in FRAMEWORKS:
            log(f"[grpo {cfg.preset}] repetition {rep + 1}/{reps}: {fw} ({load_note()})")
            result = run_worker(MODULE, ["--worker", fw, *config_args(cfg)])
            runs[fw].append(result)
            log(f"    {result['step_s']:.3f} s/step, peak RSS {result['peak_rss_mb']:.0f} MB")
    return {"config": asdict(cfg), "reps": reps, "runs": runs, "summary": summarize(runs)}


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for fw, results in runs.items():
        step = spread([r["step_s"] for r in results])
        med = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
        out[fw] = {
            "step_s": step,
            "zero_std_groups": statistics.median(r["zero_std_groups"] for r in results)
            if all(r.get("zero_std_groups") is not None for r in results) else None,
            **{k: med(k) for k in ("generation_s", "reward_s", "train_other_s", "mean_length", "completions_per_s",
                                   "generated_tokens_per_s", "trained_tokens_per_s", "peak_rss_mb")},
        }
    if "rcl" in out and "trl" in out:
        out["ratio"] = {"step_s": out["rcl"]["step_s"]["median"] / out["trl"]["step_s"]["median"]}
    return out


TABLE_HEADERS = ("framework", "s/step median", "min", "max", "gen s", "reward s", "train+other s", "mean len",
                 "zero-std groups", "completions/s", "gen tok/s", "trained tok/s", "peak RSS MB")


def table(cfg_or_preset: str, summary: dict[str, dict]) -> str:
    rows = []
    for fw in FRAMEWORKS:
        s = summary[fw]
        rows.append([
            f"{'rcl' if fw == 'rcl' else 'TRL'} ({cfg_or_preset})", s["step_s"]["median"], s["step_s"]["min"],
            s["step_s"]["max"], s["generation_s"], s["reward_s"], s["train_other_s"], s["mean_length"],
            "n/a" if s["zero_std_groups"] is None else f"{s['zero_std_groups']:.0%}", s["completions_per_s"], s["generated_tokens_per_s"], s["trained_tokens_per_s"], s["peak_rss_mb"],
        ])
    text = format_table(TABLE_HEADERS, rows)
    return text + f"\nrcl/TRL step-time ratio ({cfg_or_preset}): {summary['ratio']['step_s']:.2f}"


def describe(cfg: GRPOBenchConfig, reps: int) -> str:
    return (
        f"GRPO step, {cfg.preset}: {cfg.batch_size} completions/step ({cfg.prompts_per_step} prompts x G="
        f"{cfg.num_generations}), max {cfg.max_completion_length} new tokens (both stop at eos), lr "
        f"{cfg.learning_rate}, beta 0, dapo, T={cfg.temperature}, num_iterations 1, fp32 on CPU; "
        f"{reps} alternating repetitions x {cfg.steps - 1} timed steps (+1 warm-up); reward {cfg.reward}; torch "
        f"threads {cfg.threads or 'default'}"
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GRPOBenchConfig()
    for key, value in asdict(defaults).items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)


def config_from(ns: argparse.Namespace) -> GRPOBenchConfig:
    return GRPOBenchConfig(**{k: getattr(ns, k) for k in asdict(GRPOBenchConfig())})


def worker_main(argv: list[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description="one timed run of one framework (used by the benchmark)")
    parser.add_argument("--worker", choices=FRAMEWORKS, required=True)
    parser.add_argument("--result", required=True)
    add_config_arguments(parser)
    ns = parser.parse_args(argv)
    cfg = config_from(ns)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix=f"bench-{ns.worker}-") as tmp:
        result = (run_rcl if ns.worker == "rcl" else run_trl)(cfg, Path(tmp))
    write_worker_result(ns.result, result)


if __name__ == "__main__":
    worker_main()
