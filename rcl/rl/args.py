"""Typed argument groups of the RL phase. Their attribute docstrings are the `--help` text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rcl.prompts import MissingTeaching



class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


@dataclass
class TrainerArgs:
    """Fabric runtime and loop length (the same flags as the SFT trainer)."""

    accelerator: str = "auto"
    """cpu, cuda, gpu or auto."""
    strategy: str = "auto"
    """auto, ddp, deepspeed_stage_2, deepspeed_stage_3, deepspeed_stage_3_offload, fsdp, ..."""
    devices: int | str = 1
    """Training processes per node."""
    num_nodes: int = 1
    precision: str = "32-true"
    """Fabric precision: 32-true, bf16-mixed, bf16-true, 16-mixed."""
    max_steps: int = 100
    """Optimizer steps to train for."""
    seed: int = 42
    """Seeds data order, sampling and initialisation; every step's sampling seed derives from it."""
    out_dir: str = "runs/rl"
    """Run directory: logs, checkpoints, degradations, samples and the final HF export."""
    log_every_n_steps: int = 1
    loggers: list[Literal["csv", "tensorboard", "wandb"]] = field(default_factory=lambda: ["csv", "tensorboard"])
    """Fabric loggers; wandb honours WANDB_MODE=offline."""
    wandb_group: str | None = None
    """W&B run group, with `wandb` in `loggers` (null: $WANDB_RUN_GROUP, else none); the SFT-vs-RLVR study puts both
    arms in one."""
    checkpoint_every_n_steps: int = 0
    """Save a full Fabric checkpoint every N optimizer steps (0: only at the end)."""
    keep_last_checkpoints: int = 2
    """Delete older step checkpoints beyond this many."""
    export_hf: bool = True
    """Write the trained policy and its tokenizer to `<out_dir>/hf_model` at the end."""
    num_threads: int = 0
    """torch threads of each training process (0: $OMP_NUM_THREADS when set, else the cores this process may run on,
    as `taskset` and cgroups allow, divided by the training processes on this node). More threads than cores, counting
    other processes on the machine, makes every thread wait at each parallel region (see the contention benchmark)."""


@dataclass
class ModelArgs:
    """A causal LM: a hub id, a local HF folder, or a tiny preset (tiny-1m, tiny-10m)."""

    model_name_or_path: str = "tiny-1m"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    gradient_checkpointing: bool = False
    """Only used for the trained policy."""


@dataclass
class GRPOArgs:
    """Rollout protocol and GRPO objective."""

    protocol: Literal["adaptive_teaching", "direct"] = "adaptive_teaching"
    """adaptive_teaching: the policy teaches a student; direct: the policy answers (plain RLVR)."""
    prompts_per_step: int = 8
    """Distinct prompts per optimizer step, over all processes (must divide by the number of processes)."""
    num_generations: int = 8
    """G: policy completions per prompt (the GRPO group)."""
    micro_batch_size: int = 16
    """Completions per forward/backward pass on each process."""
    num_iterations: int = 1
    """Optimizer steps taken on each rollout batch (>1 uses the PPO ratio against the behaviour log-probs)."""
    beta: float = 0.0
    """KL (k3) weight against a frozen reference model; 0 loads no reference model."""
    epsilon: float = 0.2
    """Lower clip of the ratio."""
    epsilon_high: float | None = None
    """Upper clip (null: same as epsilon; DAPO uses 0.28)."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = False
    """Exclude completions that hit max_completion_length from the loss."""
    sync_ref_model: bool = False
    """Move the reference model towards the policy every ref_model_sync_steps (needs beta > 0)."""
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    baseline_samples: int = 1
    """k: student solutions without teaching per prompt, shared by the whole group."""
    student_samples: int = 1
    """m: student solutions per teaching."""
    max_probe_tokens: int = 50
    """Cap of the student's diagnostic approach."""
    missing_teaching: MissingTeaching = "strip_thinking"
    """What the student sees when a teaching lacks <teaching> tags."""
    max_off_policy_steps: int = 0
    """N: rollouts of the next N steps are generated while the current step trains, with weights N pushes old (0:
    generate, then train, as in a synchronous loop). In process, a worker thread generates with its own copy of the
    policy, updated by the same weight push as a server."""
    importance_sampling: Literal["auto", "off", "tis", "mis", "tis_mis"] = "auto"
    """Correction of the loss for the gap between the sampler's log-probs and the trainer's: tis weights each token
    by min(ratio, is_cap); mis drops sequences whose geometric-mean ratio leaves [1/mis_threshold, mis_threshold];
    auto is tis_mis for teacher servers or max_off_policy_steps >= 1, off for synchronous in-process generation
    (where the sampler is the trainer)."""
    is_cap: float = 2.0
    """TIS: the most a token's importance weight may be."""
    mis_threshold: float = 2.0
    """MIS: sequences whose geometric-mean ratio exceeds this, or is below its inverse, leave the loss."""


@dataclass
class GenerationArgs:
    """Sampling of the policy (teacher) and the student."""

    temperature: float = 0.7
    """Policy sampling temperature; log-probs are computed at the same temperature."""
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_completion_length: int = 256
    """Most tokens of a policy completion."""
    stop: list[str] = field(default_factory=list)
    """Stop strings of the policy's completions, kept in the text (e.g. ["</answer>"] for the think_answer format)."""
    student_temperature: float = 0.7
    student_max_tokens: int = 256
    """Most tokens of a student solution."""


@dataclass
class RewardArgs:
    """Reward functions (from the registry in rcl.rewards) with their weights and arguments."""

    functions: dict[str, float] = field(default_factory=lambda: {"adaptive_teaching": 1.0})
    """name -> weight."""
    kwargs: dict[str, dict] = field(default_factory=lambda: {"adaptive_teaching": {"efficiency_weight": 1.0}})
    """name -> constructor keyword arguments."""


@dataclass
class EvalArgs:
    """Held-out evaluation: student alone vs teacher + student (or the policy alone for `direct`)."""

    every_n_steps: int = 0
    """Evaluate every N optimizer steps (0: only before and after training)."""
    num_prompts: int = 64
    """Validation prompts per evaluation (fixed subset)."""
    temperature: float = 0.0
    """0 is greedy; sampled evaluation uses a fixed seed."""
    at_start: bool = True
    """Also evaluate before the first step."""
    keep_best: bool = False
    """Export the policy of the best evaluation so far (teacher + student accuracy, or accuracy for `direct`; the
    validation split, never a test split) to <out_dir>/best_hf_model, with best.json naming its step. The start's
    policy counts, so RL that never beats it keeps the start."""


@dataclass
class EngineArgs:
    """Where one role's generations run."""

    backend: Literal["in_process", "server"] = "in_process"
    """in_process: HF generate in the training process (the policy's live weights); server: rcl/TRL servers."""
    urls: list[str] = field(default_factory=list)
    api: Literal["rcl", "openai"] = "rcl"
    """Server routes: rcl (`rcl serve`, TRL's classic `vllm-serve`; takes weight pushes) or openai (`vllm serve` and
    other OpenAI-style completion servers; generation only, so for the student, whose weights never change)."""
    api_key: str | None = None
    """Falls back to $RCL_API_KEY."""
    timeout_s: float = 120.0
    max_batch_size: int = 256
    """In-process: most sequences per generate call."""


@dataclass
class EnginesArgs:
    teacher: EngineArgs = field(default_factory=EngineArgs)
    """Engines of the policy (the teacher in adaptive teaching)."""
    student: EngineArgs = field(default_factory=EngineArgs)
    sync_every_n_steps: int = 1
    """Push the policy's weights to teacher servers every N optimizer steps (in-process engines need no push). Above 1
    the rollouts between pushes are off-policy, so grpo.importance_sampling must not be off."""
    verify_every_n_pushes: int = 1
    """After every N-th push, check that the servers hold the trainer's weights: greedy log-probs of a fixed probe
    prompt, served against the trainer's (0: never). A mismatch stops training with both values."""
    verify_tolerance: float = 1e-3
    """Largest allowed |served - trainer| log-prob of a probe token (float32 servers agree to ~1e-6; bf16 vLLM
    needs ~0.05)."""
    sync_bucket_mb: float = 64.0
    """Most megabytes per weight-update bucket."""
    sync_transport: Literal["http", "gloo", "nccl"] = "http"
    """How buckets reach teacher servers: HTTP bodies, or a broadcast over a weight group the trainer joins as the
    last rank (gloo: CPU; nccl: GPUs, needs vLLM in the trainer's environment)."""
    sync_group_port: int = 51216
    """gloo/nccl: the group with the i-th teacher server uses this port + i."""


@dataclass
class LoggingArgs:
    """What besides scalar metrics is written."""

    sample_every_n_steps: int = 10
    """Write a few rollouts every N steps (0: never)."""
    samples_per_log: int = 4
    degradation_window: int = 50
    """Interactions in the NDR window of the degradation warning."""
    ndr_warn_threshold: float = 0.9
    """Warn when NDR over the window falls below this."""
    ndr_warn_every_n_steps: int = 50
    """While NDR stays below the threshold, repeat the warning at most every N steps (teaching/window_ndr is logged
    every step either way)."""
    degradations_per_step: int = 16
    """Most degraded interactions written to degradations.jsonl per step, the most degraded first (-1: all)."""
    degradations_max_mb: float = 64.0
    """Once degradations.jsonl passes this size it moves to degradations.jsonl.1 (replacing an older one), so the two
    hold the newest rows and at most twice this (0: no limit)."""
