"""The RL phase: a Fabric GRPO loop (`setup()` for the CLI, `main(fabric, ...)`, a plain `fit()`).

Each optimizer step draws `prompts_per_step` prompts (split over processes, so GRPO groups never span processes),
rolls them out (see rcl.rl.rollout), and takes `num_iterations` optimizer steps on the rollout with gradient
accumulation over micro-batches. Sampling seeds derive from (seed, step, rank), so a resumed run repeats exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.strategies import DeepSpeedStrategy

from callbacks.base import FabricCallback
from data_modules import DataError
from data_modules.teacher_student import TeacherStudentDataModule
from callbacks.degradation import DegradationTracker
from callbacks.ref_sync import RefModelSync
from callbacks.sample_logging import SampleLogger
from callbacks.teaching_metrics import TeachingMetrics
from callbacks.weight_sync import WeightSync
from rcl.engines import HFEngine, SamplingParams
from rcl import lora as lora_lib
from rcl.rl import multiturn as multiturn_lib
from rcl.rl import ppo as ppo_lib
from rcl.eval.report import fmt
from rcl.eval.stats import interval_metrics
from rcl.grpo import (
    completion_logprobs,
    completion_mask,
    group_advantages,
    grpo_loss,
    importance_correction,
    mask_truncated,
)
from rcl.optim import OptimizerArgs, build_optimizer, build_scheduler
from rcl.progress import StepClock, format_duration
from rcl.prompts import PromptTemplates
from rcl.rewards import get_reward, teaching_reward_inversions
from rcl.rl.args import (
    ConfigError,
    EngineArgs,
    EnginesArgs,
    EvalArgs,
    GenerationArgs,
    GRPOArgs,
    LoggingArgs,
    ModelArgs,
    RewardArgs,
    TrainerArgs,
)
from rcl.rl.async_rollouts import LocalWorker, RolloutPipeline, VersionedEngine, staleness
from rcl.rl.importance import resolve_correction, sampler_logprobs
from rcl.rl.rollout import Rollout, RolloutRunner, RolloutSettings
from rcl.rl.threads import busy_machine_warning, training_threads
from rcl.rl.trend import room_warning, trend_line
from rcl.interrupt import StopRequest, TrainingInterrupted, report, resume_command
from rcl.run_dir import (
    RL_OUTPUTS,
    STEP_LOGS,
    RunFolderInUse,
    latest_checkpoint,
    log_version,
    refuse_to_replace,
    remove_outputs,
    truncate_to_step,
)
from rcl.tasks import Environment, Task, TaskArgs
from rcl.tasks.mixture import per_task_means
from rcl.tasks.self_test import RewardSelfTestError, reward_self_test, summary
from rcl.tiny_models import ModelNotFound, check_model, resolve_model

DEFAULT_OPTIMIZER = OptimizerArgs(learning_rate=1e-6, schedule="constant", max_grad_norm=1.0)


def setup(
    data: TeacherStudentDataModule,
    task: TaskArgs = TaskArgs(),
    trainer: TrainerArgs = TrainerArgs(),
    teacher: ModelArgs = ModelArgs(),
    student: ModelArgs = ModelArgs(),
    grpo: GRPOArgs = GRPOArgs(),
    generation: GenerationArgs = GenerationArgs(),
    reward: RewardArgs = RewardArgs(),
    optimizer: OptimizerArgs = DEFAULT_OPTIMIZER,
    templates: PromptTemplates = PromptTemplates(),
    eval: EvalArgs = EvalArgs(),
    engines: EnginesArgs = EnginesArgs(),
    logging: LoggingArgs = LoggingArgs(),
    callbacks: list[FabricCallback] | None = None,
    ckpt_path: str | None = None,
    overwrite: bool = False,
    command: str = "fit",
    lora: lora_lib.LoraArgs = lora_lib.LoraArgs(),
    algorithm: Literal["grpo", "ppo"] = "grpo",
    ppo: ppo_lib.PPOArgs = ppo_lib.PPOArgs(),
    multiturn: multiturn_lib.MultiTurnArgs = multiturn_lib.MultiTurnArgs(),
) -> None:
    """Train (or, with command=validate, evaluate) a policy with GRPO.

    Args:
        data: The TeacherStudentDataModule; the loop reads its `rl_dataset("train"|"val")`.
        task: What the rows are and how answers are scored (rcl.tasks): every correctness signal comes from it.
        trainer: Fabric runtime and loop length.
        teacher: The policy (the teacher in adaptive teaching).
        student: The student (unused by the direct protocol).
        grpo: Protocol and objective.
        generation: Sampling.
        reward: Reward functions and weights.
        optimizer: AdamW and schedule of the policy.
        templates: Prompts of every role (shared with SFT).
        eval: Held-out evaluation.
        engines: Where each role generates.
        logging: Samples and degradation tracking.
        callbacks: Extra Fabric callbacks (subclasses of callbacks.base.FabricCallback).
        ckpt_path: Resume from this Fabric checkpoint.
        overwrite: Replace an earlier run's outputs in `trainer.out_dir`. Without it, a fresh `fit` into a folder that
            holds a run is refused (resume that run with `ckpt_path`, or pick another `trainer.out_dir`).
        lora: LoRA adapters on the policy (peft); with beta > 0 the reference is the policy with its adapters off.
        algorithm: grpo (group advantages, `grpo`'s objective) or ppo (a critic and GAE, `ppo`'s objective; the same
            rollouts, rewards and callbacks).
        ppo: PPO's critic and objective (algorithm ppo).
        multiturn: Episodes of multi-turn environments (tasks that are not single-turn); their rewards are the
            environment's, so `reward` is not used for them.
    """
    validate_config(trainer, grpo, engines, algorithm)
    validate_ppo(algorithm, grpo, ppo, trainer)
    validate_lora(lora, trainer, grpo)
    warn_reward_inversions(grpo, reward)
    preflight(data, trainer, teacher, student, grpo, ckpt_path, overwrite, command)
    check_task(task, data, reward, grpo, command)
    fabric = build_fabric(trainer, default_callbacks(grpo, logging, engines, lora) + list(callbacks or []),
                          ckpt_path, command)
    fabric.launch(
        main, data, trainer, teacher, student, grpo, generation, reward, optimizer, templates, eval, engines, ckpt_path,
        command, task=task, lora=lora, ppo=ppo if algorithm == "ppo" else None, multiturn=multiturn,
    )


def preflight(data, trainer: TrainerArgs, teacher: ModelArgs, student: ModelArgs, grpo: GRPOArgs,
              ckpt_path: str | None, overwrite: bool, command: str) -> None:
    """What can be checked before any process starts or any folder is made: the models, the data, the checkpoint
    and the run folder. Raises ConfigError with a one-line message."""
    roles = [("teacher", teacher)] + ([("student", student)] if grpo.protocol == "adaptive_teaching" else [])
    for role, args in roles:
        try:
            check_model(args.model_name_or_path)
        except ModelNotFound as exc:
            raise ConfigError(f"{role}.model_name_or_path: {exc}") from None
    try:
        data.rl_dataset("train", ()), data.rl_dataset("val", ())  # the task's own fields are check_task's
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    if ckpt_path and not Path(ckpt_path).exists():
        raise ConfigError(f"ckpt_path {ckpt_path} does not exist")
    if command == "fit" and not ckpt_path and not overwrite:
        try:
            refuse_to_replace(Path(trainer.out_dir), RL_OUTPUTS, "trainer.out_dir")
        except RunFolderInUse as exc:
            raise ConfigError(str(exc)) from None


def prepare_run_folder(fabric, out_dir: Path, fresh: bool, resumed_step: int | None) -> None:
    """Rank 0 makes the run folder once the run is known to start. A fresh run replaces an earlier run's outputs
    (`preflight` refused them without `overwrite`); a resumed one cuts its step logs back to the checkpoint's step, so
    the steps it replays are not listed twice."""
    if fabric.global_rank == 0:
        if fresh:
            remove_outputs(out_dir, RL_OUTPUTS)
        out_dir.mkdir(parents=True, exist_ok=True)
        if resumed_step is not None:
            dropped = {name: truncate_to_step(out_dir / name, resumed_step) for name in STEP_LOGS}
            if any(dropped.values()):
                fabric.print(f"resumed at step {resumed_step}: removed the rows logged after it by the earlier run ("
                             + ", ".join(f"{n} {name}" for name, n in dropped.items() if n) + ")")
    fabric.barrier()


def build_fabric(trainer: TrainerArgs, callbacks: list[FabricCallback], ckpt_path: str | None = None,
                 command: str = "fit"):
    import lightning as L

    version = log_version(command, ckpt_path)
    return L.Fabric(
        accelerator=trainer.accelerator,
        strategy=trainer.strategy,
        devices=trainer.devices,
        num_nodes=trainer.num_nodes,
        precision=trainer.precision,
        loggers=build_loggers(trainer.loggers, Path(trainer.out_dir), version, trainer.wandb_group),
        callbacks=callbacks,
    )


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside Fabric/DDP wrappers: the HF model whose config, generate and save_pretrained the loop
    uses."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module


def is_deepspeed(fabric) -> bool:
    return isinstance(fabric.strategy, DeepSpeedStrategy)


def deepspeed_engine(fabric, model):
    """The DeepSpeedEngine inside Fabric's wrapper under a DeepSpeed strategy, else None."""
    if not is_deepspeed(fabric):
        return None
    return getattr(model, "_forward_module", model)


def validate_config(trainer: TrainerArgs, grpo: GRPOArgs, engines: EnginesArgs,
                    algorithm: str = "grpo") -> None:
    if grpo.num_generations < 2 and algorithm == "grpo":
        raise ConfigError(f"grpo.num_generations must be >= 2 for group advantages, got {grpo.num_generations}")
    if grpo.beta == 0 and grpo.sync_ref_model:
        raise ConfigError("grpo.sync_ref_model needs grpo.beta > 0 (with beta 0 no reference model is loaded)")
    world = (int(trainer.devices) if str(trainer.devices).isdigit() else 1) * trainer.num_nodes
    if grpo.prompts_per_step % world:
        raise ConfigError(
            f"grpo.prompts_per_step={grpo.prompts_per_step} must be divisible by the {world} training processes "
            f"(trainer.devices x trainer.num_nodes); use a multiple of {world}"
        )
    for role in ("teacher", "student"):
        e: EngineArgs = getattr(engines, role)
        if e.backend == "server" and not e.urls:
            raise ConfigError(f"engines.{role}.backend is 'server' but engines.{role}.urls is empty")
    sharded = "fsdp" in trainer.strategy or "stage_3" in trainer.strategy
    if sharded and world > 1 and engines.teacher.backend == "in_process":
        raise ConfigError(
            f"trainer.strategy={trainer.strategy} shards the policy over {world} processes, and in-process generation "
            "would need every process to generate in lockstep (each forward gathers the shards), which HFEngine does "
            "not do: serve the teacher (engines.teacher.backend server, e.g. through `python -m rcl launch`)"
        )
    off_policy_checks(grpo, engines)
    if engines.teacher.backend == "server" and engines.teacher.api == "openai":
        raise ConfigError("engines.teacher.api is 'openai', but OpenAI-style servers take no weight pushes, so the "
                          "teacher would generate with its initial weights: serve it with `rcl serve` (api: rcl)")


def validate_ppo(algorithm: str, grpo: GRPOArgs, ppo: ppo_lib.PPOArgs,
                 trainer: TrainerArgs = TrainerArgs()) -> None:
    if algorithm != "ppo":
        return
    if "deepspeed" in trainer.strategy or "fsdp" in trainer.strategy:
        raise ConfigError(f"algorithm ppo under trainer.strategy={trainer.strategy} is not supported yet (the critic "
                          "is a second model with its own optimizer): use one process or ddp")
    if grpo.num_iterations != 1:
        raise ConfigError("algorithm ppo takes its passes over a rollout from ppo.ppo_epochs: set "
                          "grpo.num_iterations 1")
    if grpo.max_off_policy_steps:
        raise ConfigError("algorithm ppo trains on-policy rollouts only: set grpo.max_off_policy_steps 0")
    if grpo.beta != 0:
        raise ConfigError("algorithm ppo puts the KL term in the reward: set ppo.kl_coef (and grpo.beta 0)")
    if ppo.ppo_epochs < 1 or ppo.mini_batch_size < 1:
        raise ConfigError("ppo.ppo_epochs and ppo.mini_batch_size must be >= 1")
    if ppo.adaptive_kl and ppo.kl_coef <= 0:
        raise ConfigError("ppo.adaptive_kl needs an initial ppo.kl_coef > 0")


def validate_lora(lora: lora_lib.LoraArgs, trainer: TrainerArgs, grpo: GRPOArgs) -> None:
    try:
        lora_lib.check_quantization(lora, trainer.accelerator)
    except lora_lib.LoraConfigError as exc:
        raise ConfigError(str(exc)) from None
    if lora.enabled and grpo.sync_ref_model:
        raise ConfigError("grpo.sync_ref_model with lora.enabled: the reference is the policy with its adapters off, "
                          "so there is no separate reference to move; turn one of them off")
    sharded = "fsdp" in trainer.strategy or "stage_3" in trainer.strategy
    if lora.enabled and lora.export == "adapter" and sharded and trainer.export_hf:
        raise ConfigError(f"lora.export adapter under trainer.strategy={trainer.strategy} is not supported yet; use "
                          "lora.export merged (gathered like weight sync)")
    if lora.sync == "adapter" and (not lora.enabled or sharded):
        raise ConfigError("lora.sync adapter needs lora.enabled and an unsharded strategy (ddp or one process); "
                          "use lora.sync merged")


def off_policy_checks(grpo: GRPOArgs, engines: EnginesArgs) -> None:
    """Rollouts sampled with older weights need the importance-sampling correction, and one rollout per step."""
    if grpo.max_off_policy_steps < 0:
        raise ConfigError(f"grpo.max_off_policy_steps must be >= 0, got {grpo.max_off_policy_steps}")
    if grpo.max_off_policy_steps > 0 and grpo.num_iterations != 1:
        raise ConfigError(f"grpo.max_off_policy_steps={grpo.max_off_policy_steps} needs grpo.num_iterations 1 (the "
                          "pipeline schedules one rollout per optimizer step)")
    stale = engines.sync_every_n_steps > 1 and (engines.teacher.backend == "server" or grpo.max_off_policy_steps > 0)
    if (stale or grpo.max_off_policy_steps > 0) and resolve_correction(grpo, engines) == "off":
        why = (f"engines.sync_every_n_steps={engines.sync_every_n_steps}" if stale
               else f"grpo.max_off_policy_steps={grpo.max_off_policy_steps}")
        raise ConfigError(f"{why}: rollouts are sampled with older weights than the trainer's, and "
                          "grpo.importance_sampling is off, so the loss would treat them as on-policy: use auto, tis, "
                          "mis or tis_mis")


def warn_reward_inversions(grpo: GRPOArgs, reward: RewardArgs) -> list:
    """Warn (and return the cases) when the recipe's (k, m) let the adaptive reward rank a worse teaching higher."""
    if grpo.protocol != "adaptive_teaching" or "adaptive_teaching" not in reward.functions:
        return []
    cases = teaching_reward_inversions(grpo.baseline_samples, grpo.student_samples)
    if cases:
        shown = ", ".join(f"p_base {float(b):.2f} kept beats p_with {float(w):.2f}" for b, w in cases[:3])
        warnings.warn(f"grpo.baseline_samples={grpo.baseline_samples} with grpo.student_samples={grpo.student_samples} "
                      f"lets the adaptive_teaching reward rank a better teaching lower inside a group ({shown}); "
                      "the shipped recipes' (4, 1) and (4, 2) do not", stacklevel=2)
    return cases


def default_callbacks(grpo: GRPOArgs, logging: LoggingArgs, engines: EnginesArgs,
                      lora: lora_lib.LoraArgs = lora_lib.LoraArgs()) -> list[FabricCallback]:
    callbacks: list[FabricCallback] = [
        TeachingMetrics(),
        DegradationTracker(window=logging.degradation_window, ndr_threshold=logging.ndr_warn_threshold,
                           warn_every_n_steps=logging.ndr_warn_every_n_steps,
                           max_per_step=logging.degradations_per_step, max_file_mb=logging.degradations_max_mb),
        SampleLogger(every_n_steps=logging.sample_every_n_steps, num_samples=logging.samples_per_log),
    ]
    if grpo.sync_ref_model:
        callbacks.append(RefModelSync(grpo.ref_model_mixup_alpha, grpo.ref_model_sync_steps))
    callbacks.append(WeightSync(engines.sync_every_n_steps, engines.sync_bucket_mb,
                                adapter_only=lora.enabled and lora.sync == "adapter",
                                verify_every_n_pushes=engines.verify_every_n_pushes,
                                verify_tolerance=engines.verify_tolerance))
    return callbacks


def build_loggers(names: list[str], out_dir: Path, version: str = "", wandb_group: str | None = None) -> list:
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    loggers = []
    for name in names:
        if name == "csv":
            loggers.append(CSVLogger(str(out_dir), name="csv", version=version))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=version))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(out_dir), project="rcl", group=wandb_group))
    return loggers


def load_causal_lm(args: ModelArgs, trainable: bool, seed: int = 0,
                   lora: lora_lib.LoraArgs | None = None) -> torch.nn.Module:
    """`lora` (the trained policy only) adds adapters; a saved adapter folder loads merged without it."""
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = lora_lib.load_for_training(resolve_model(args.model_name_or_path, seed=seed),
                                       lora if trainable and lora is not None else lora_lib.LoraArgs(),
                                       dtype=dtype, attn_implementation=args.attn_implementation)
    if trainable and args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not trainable:
        model.eval().requires_grad_(False)
    return model


def load_tokenizer(args: ModelArgs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(args.model_name_or_path), padding_side="left")


def check_task(args: TaskArgs, data, reward: RewardArgs, grpo: GRPOArgs, command: str) -> None:
    """Build the task, read its rows, and (for fit) run the reward self-test on a few training rows, before any
    process starts: a recipe whose rewards cannot tell a right answer from nothing fails in seconds."""
    task = build_task(args)
    try:
        rows = data.rl_dataset("train", task.fields)
        data.rl_dataset("val", task.fields)
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    if command != "fit" or not isinstance(task, Task):  # an environment's rewards are its own
        return
    rewards = {name: get_reward(name, **reward.kwargs.get(name, {})) for name in reward.functions}
    try:
        table = reward_self_test(task, rewards, dict(reward.functions), rows.select(range(min(4, len(rows)))).to_list(),
                                 grpo.protocol)
    except RewardSelfTestError as err:
        raise ConfigError(str(err)) from None
    print(summary(table), flush=True)


def build_task(args: TaskArgs) -> Environment:
    try:
        return args.build()
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"task: {exc}") from None


def build_engine(args: EngineArgs, model: torch.nn.Module | None, tokenizer: Any, **server_kwargs: Any):
    """`server_kwargs` go to a `ServerEngine` only (the teacher's weight transport)."""
    if args.backend == "in_process":
        return HFEngine(model, tokenizer, max_batch_size=args.max_batch_size)
    from rcl.serving.client import ServerEngine

    return ServerEngine(args.urls, tokenizer, api_key=args.api_key, timeout_s=args.timeout_s, api=args.api,
                        **server_kwargs)


def rollout_settings(grpo: GRPOArgs, gen: GenerationArgs) -> RolloutSettings:
    policy = SamplingParams(
        max_tokens=gen.max_completion_length,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        min_p=gen.min_p,
        repetition_penalty=gen.repetition_penalty,
        stop=list(gen.stop),
    )
    student = SamplingParams(max_tokens=gen.student_max_tokens, temperature=gen.student_temperature)
    return RolloutSettings(
        protocol=grpo.protocol,
        num_generations=grpo.num_generations,
        baseline_samples=grpo.baseline_samples,
        student_samples=grpo.student_samples,
        max_probe_tokens=grpo.max_probe_tokens,
        missing_teaching=grpo.missing_teaching,
        policy=policy,
        student=student,
        scale_rewards=grpo.scale_rewards,
    )


def eval_settings(train: RolloutSettings, eval_args: EvalArgs) -> RolloutSettings:
    return replace(
        train,
        num_generations=1,
        baseline_samples=1,
        student_samples=1,
        policy=replace(train.policy, temperature=eval_args.temperature),
        student=replace(train.student, temperature=eval_args.temperature),
    )


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 10_007 + rank * 101 + salt * 7) % (2**31 - 1)


def main(
    fabric: Any,
    data: Any,
    trainer: TrainerArgs,
    teacher: ModelArgs,
    student: ModelArgs,
    grpo: GRPOArgs,
    generation: GenerationArgs,
    reward: RewardArgs,
    optimizer_args: OptimizerArgs,
    templates: PromptTemplates,
    eval_args: EvalArgs,
    engines_args: EnginesArgs,
    ckpt_path: str | None,
    command: str = "fit",
    task: TaskArgs = TaskArgs(),
    lora: lora_lib.LoraArgs = lora_lib.LoraArgs(),
    ppo: ppo_lib.PPOArgs | None = None,
    multiturn: multiturn_lib.MultiTurnArgs = multiturn_lib.MultiTurnArgs(),
) -> dict:
    if grpo.prompts_per_step % fabric.world_size:  # devices "auto", -1 or a list are only counted here
        raise ConfigError(
            f"grpo.prompts_per_step={grpo.prompts_per_step} must be divisible by the {fabric.world_size} training "
            f"processes; use a multiple of {fabric.world_size}"
        )
    if ppo is not None and ppo.mini_batch_size % fabric.world_size:
        raise ConfigError(f"ppo.mini_batch_size={ppo.mini_batch_size} counts completions over all processes and must "
                          f"be divisible by the {fabric.world_size} training processes")
    out_dir = Path(trainer.out_dir)
    # an in-process async run computes on two threads of its own (training, the generation worker): each gets a share
    computing = max(1, fabric.world_size // trainer.num_nodes) * (
        2 if grpo.max_off_policy_steps > 0 and engines_args.teacher.backend == "in_process" else 1)
    threads = training_threads(trainer.num_threads, computing)
    torch.set_num_threads(threads)
    busy = busy_machine_warning(threads * computing) if fabric.global_rank == 0 else None
    if busy:
        warnings.warn(busy, stacklevel=1)
    fabric.seed_everything(trainer.seed)
    the_task = build_task(task)
    train_rows, val_rows = data.rl_dataset("train", the_task.fields), data.rl_dataset("val", the_task.fields)
    rewards = {name: get_reward(name, **reward.kwargs.get(name, {})) for name in reward.functions}

    teacher_tok = load_tokenizer(teacher)
    adaptive = grpo.protocol == "adaptive_teaching"
    student_tok = load_tokenizer(student) if adaptive else None

    # Loaded whole on the host: fabric.setup then moves it, or shards it (FSDP, DeepSpeed ZeRO partition on init).
    policy = load_causal_lm(teacher, trainable=True, lora=lora)
    peft_policy = lora_lib.find_peft(policy) is not None
    if peft_policy:
        fabric.print(f"LoRA policy: {lora_lib.describe_trainable(policy)}")
    if is_deepspeed(fabric) and optimizer_args.max_grad_norm:
        fabric.strategy.config["gradient_clipping"] = optimizer_args.max_grad_norm  # DeepSpeed clips inside its step
    reference = None
    if grpo.beta != 0 or (ppo is not None and ppo.kl_coef != 0):
        reference = (lora_lib.DisabledAdapter(policy) if peft_policy
                     else load_causal_lm(teacher, trainable=False).to(fabric.device))
    optimizer = build_optimizer(policy.parameters(), optimizer_args)
    policy, optimizer = fabric.setup(policy, optimizer)
    scheduler = build_scheduler(optimizer, trainer.max_steps, optimizer_args)

    if grpo.max_off_policy_steps > 0 and engines_args.teacher.backend == "in_process":
        import copy

        sampler = LocalWorker(copy.deepcopy(unwrap(policy)), teacher_tok, engines_args.teacher.max_batch_size)
    else:
        sampler = build_engine(engines_args.teacher, unwrap(policy), teacher_tok,
                               weight_transport=engines_args.sync_transport, group_port=engines_args.sync_group_port)
    policy_engine = VersionedEngine(sampler, lambda: state["step"])
    student_engine = None
    if adaptive:
        student_model = (
            load_causal_lm(student, trainable=False).to(fabric.device)
            if engines_args.student.backend == "in_process"
            else None
        )
        student_engine = build_engine(engines_args.student, student_model, student_tok)
    engines = {"teacher": policy_engine, "student": student_engine}

    if isinstance(the_task, Task):
        runner = RolloutRunner(policy_engine, student_engine, templates, rewards, dict(reward.functions), the_task)
    else:
        if adaptive:
            raise ConfigError(f"task {task.name!r} is a multi-turn environment: use grpo.protocol direct")
        runner = multiturn_lib.MultiTurnRunner(
            policy_engine, multiturn_lib.copy_factory(the_task), templates, multiturn.reward_aggregate,
            multiturn.workers, multiturn.timeout_s, multiturn.max_total_tokens)
    settings = rollout_settings(grpo, generation)
    stop_ids = [teacher_tok.eos_token_id]

    state = {
        "model": policy,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "step": 0,
        "prompts_seen": 0,
        "ref_model": reference,
        "out_dir": str(out_dir),
        "pending": None,
        "ppo": ppo,
        "is_correction": resolve_correction(grpo, engines_args),
    }
    if grpo.max_off_policy_steps > 0:
        state["prefetched"] = {}
    if ppo is not None:
        ppo_lib.setup_critic(fabric, state, ppo, teacher.model_name_or_path, optimizer_args, trainer.max_steps,
                             trainer.seed)
    if ckpt_path:
        view = _checkpoint_view(state)
        remainder = fabric.load(ckpt_path, view)
        state.update(step=view["step"], prompts_seen=view["prompts_seen"],
                     pending=PendingRollout.from_state(view["pending"], fabric.device))
        if state.get("kl_controller") is not None:
            state["kl_controller"].value = float(view["kl_coef"])
        if "prefetched" in state:
            state["prefetched"] = view["prefetched"]
        if "rng" in remainder:
            torch.set_rng_state(remainder["rng"])
        fabric.call("on_load_checkpoint", fabric=fabric, state=state, checkpoint=remainder)
        fabric.print(f"resumed from {ckpt_path} at step {state['step']}")

    if len(train_rows) < grpo.prompts_per_step:
        raise ConfigError(
            f"the training split has {len(train_rows)} prompts, fewer than grpo.prompts_per_step={grpo.prompts_per_step}"
        )
    prepare_run_folder(fabric, out_dir, fresh=not ckpt_path and command == "fit",
                       resumed_step=state["step"] if ckpt_path and command == "fit" else None)

    # a validation of a trained folder keeps its rows apart from the training history it evaluates
    history_path = out_dir / ("history.jsonl" if command == "fit" else f"{command}.jsonl")
    stop = StopRequest().install() if command == "fit" else StopRequest()  # validate: Ctrl-C just stops
    try:
        if command == "validate":
            metrics = evaluate(fabric, state, runner, val_rows, settings, eval_args, trainer.seed)
            _record(fabric, history_path, metrics, state["step"])
            return metrics
        fit(fabric, state, runner, engines, train_rows, val_rows, settings, trainer, grpo, generation, eval_args,
            optimizer_args, stop_ids, history_path, stop)
    finally:
        stop.restore()
        runner.close()  # a multi-turn runner's environment workers
        for engine in engines.values():  # server clients leave their weight groups with the servers
            close = getattr(engine, "close", None)
            if callable(close):
                close()

    if trainer.export_hf:
        export_hf(fabric, policy, teacher_tok, out_dir / "hf_model", lora.export)
        if ppo is not None:
            ppo_lib.export_critic(fabric, state["critic"], out_dir / "hf_model")
    return state


def fit(
    fabric, state, runner, engines, train_rows, val_rows, settings, trainer, grpo, generation, eval_args,
    optimizer_args, stop_ids, history_path, stop: StopRequest | None = None,
) -> None:
    fabric.call("on_train_start", fabric=fabric, state=state, engines=engines)
    if eval_args.at_start and state["step"] == 0:
        _record(fabric, history_path, evaluate(fabric, state, runner, val_rows, settings, eval_args, trainer.seed), 0)
    local_prompts = grpo.prompts_per_step // fabric.world_size
    clock = StepClock(state["step"])

    def draw(step: int) -> tuple[list[dict], int]:
        rows = next_prompts(train_rows, state, grpo.prompts_per_step, trainer.seed, fabric.global_rank, local_prompts)
        fabric.call("on_train_batch_start", fabric=fabric, state=state, rows=rows)
        return rows, step_seed(trainer.seed, step, fabric.global_rank)

    pipeline = None
    if grpo.max_off_policy_steps > 0:
        pipeline = RolloutPipeline(lambda rows, seed: runner.run(rows, seed, settings), draw,
                                   grpo.max_off_policy_steps, trainer.max_steps, state["step"],
                                   RolloutPipeline.ready_from_state(state.get("prefetched")))
        state["prefetched"] = pipeline
        engines["teacher"].before_push = pipeline.drain
    try:
        _fit_steps(fabric, state, runner, engines, val_rows, settings, trainer, grpo, generation, eval_args,
                   optimizer_args, stop_ids, history_path, stop, clock, draw, pipeline)
    finally:
        if pipeline is not None:
            pipeline.close()
    if not eval_args.every_n_steps or state["step"] % eval_args.every_n_steps:
        _record(fabric, history_path,
                evaluate(fabric, state, runner, val_rows, settings, eval_args, trainer.seed), state["step"])
    save_checkpoint(fabric, state, trainer.keep_last_checkpoints)
    fabric.call("on_train_end", fabric=fabric, state=state)
    for logger in fabric.loggers:
        logger.finalize("success")


def _fit_steps(fabric, state, runner, engines, val_rows, settings, trainer, grpo, generation, eval_args,
               optimizer_args, stop_ids, history_path, stop, clock, draw, pipeline) -> None:
    last_step_end = time.perf_counter()
    while state["step"] < trainer.max_steps:
        if state["pending"] is None:  # a resumed run first finishes the rollout its checkpoint was taken in
            if pipeline is None:
                rows, seed = draw(state["step"])
                rollout = runner.run(rows, seed, settings)
            else:
                rollout = pipeline.take(state["step"])
            if settings.scale_rewards == "batch" and fabric.world_size > 1:
                rescale_by_global_std(fabric, rollout)
            state["pending"] = PendingRollout(rollout, next_iteration=0, old_logps=None)
        pending = state["pending"]
        rollout = pending.rollout
        for iteration in range(pending.next_iteration, grpo.num_iterations):
            if state["step"] >= trainer.max_steps:
                break
            if grpo.num_iterations > 1 and pending.old_logps is None:
                pending.old_logps = behaviour_logprobs(state["model"], rollout, grpo, generation, fabric)
            start = time.perf_counter()
            if state.get("ppo") is not None:
                stats = ppo_lib.train_step(
                    fabric, state, rollout, state["ppo"], generation, optimizer_args,
                    lambda index, comp: _mask(rollout, index, comp, stop_ids, grpo),
                    step_seed(trainer.seed, state["step"], fabric.global_rank, salt=3))
            else:
                stats = train_step(fabric, state, rollout, grpo, generation, optimizer_args, stop_ids,
                                   pending.old_logps)
            ages = staleness(rollout, state["step"])
            stats.update({"staleness/mean": float(ages.mean()), "staleness/max": float(ages.max())})
            state["step"] += 1
            pending.next_iteration = iteration + 1
            if pending.next_iteration == grpo.num_iterations:
                state["pending"] = None
            if pipeline is not None:
                stats.update(pipeline.pop_timings())
            metrics = step_metrics(fabric, rollout, stats, state, time.perf_counter() - start, grpo)
            metrics["time/step"], last_step_end = time.perf_counter() - last_step_end, time.perf_counter()
            fabric.call("on_train_batch_end", fabric=fabric, state=state, rollout=rollout, metrics=metrics,
                        engines=engines, iteration=iteration)
            if pipeline is not None:
                pipeline.fill(state["step"])  # the weights of this step are pushed: the next rollouts may start
            if state["step"] % trainer.log_every_n_steps == 0 or state["step"] == trainer.max_steps:
                _record(fabric, history_path, metrics, state["step"])
                fabric.print(progress_line(state["step"], trainer.max_steps, metrics,
                                           clock.eta(state["step"], trainer.max_steps)))
            if eval_args.every_n_steps and state["step"] % eval_args.every_n_steps == 0:
                if pipeline is not None:  # evaluation and the worker would share the engines and the seeded RNG
                    pipeline.drain()
                _record(fabric, history_path,
                        evaluate(fabric, state, runner, val_rows, settings, eval_args, trainer.seed), state["step"])
            if trainer.checkpoint_every_n_steps and state["step"] % trainer.checkpoint_every_n_steps == 0:
                save_checkpoint(fabric, state, trainer.keep_last_checkpoints)
            stop_if_signalled(fabric, state, trainer, stop)
    if pipeline is not None:
        pipeline.drain()


@dataclass
class PendingRollout:
    """A rollout with optimizer passes still to come (`grpo.num_iterations > 1`): checkpointed with the state, so a
    run resumed between two passes finishes them on the same rollout instead of drawing a new one."""

    rollout: Rollout
    next_iteration: int
    old_logps: list[torch.Tensor] | None
    """The behaviour log-probs of the first pass, per micro-batch (the PPO ratio's denominator)."""

    def state_dict(self) -> dict:
        return {"rollout": self.rollout.state_dict(), "next_iteration": self.next_iteration,
                "old_logps": [t.cpu() for t in self.old_logps] if self.old_logps is not None else None}

    @classmethod
    def from_state(cls, state: dict, device) -> "PendingRollout | None":
        if not state:
            return None
        old = state["old_logps"]
        return cls(Rollout.from_state(state["rollout"]), int(state["next_iteration"]),
                   [t.to(device) for t in old] if old is not None else None)


def rescale_by_global_std(fabric, rollout: Rollout) -> None:
    """`scale_rewards: batch` over several processes: divide by the std of the whole gathered batch (as TRL does),
    not by each process's own, so the advantages do not depend on the process count."""
    gathered = fabric.all_gather(rollout.rewards.to(fabric.device)).reshape(-1).cpu()
    rollout.advantages, _ = group_advantages(rollout.rewards, rollout.num_generations, "batch",
                                             batch_std=float(gathered.std()))


def next_prompts(rows, state: dict, per_step: int, seed: int, rank: int, local: int) -> list[dict]:
    """This process's prompts of the next step; the order is a seeded permutation per pass over the data."""
    n = len(rows)
    passes_done, offset = divmod(state["prompts_seen"], n)
    if offset + per_step > n:  # start the next pass rather than straddle two permutations
        passes_done, offset = passes_done + 1, 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + passes_done)).tolist()
    picked = order[offset + rank * local : offset + (rank + 1) * local]
    state["prompts_seen"] = passes_done * n + offset + per_step
    return [rows[i] for i in picked]


def _pack(rollout: Rollout, index: list[int], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[left-padded prompt | right-padded completion] ids, attention mask, and completion ids."""
    prompts = [rollout.prompt_ids[i] for i in index]
    comps = [rollout.completions[i].token_ids for i in index]
    p_len, c_len = max(len(p) for p in prompts), max(max(len(c) for c in comps), 1)
    ids = torch.full((len(index), p_len + c_len), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompts, comps)):
        ids[row, p_len - len(p) : p_len] = torch.tensor(p)
        ids[row, p_len : p_len + len(c)] = torch.tensor(c, dtype=torch.long)
        attn[row, p_len - len(p) : p_len + len(c)] = 1
    return ids.to(device), attn.to(device), ids[:, p_len:].to(device)


def _micro_batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _mask(rollout: Rollout, index: list[int], completion_ids: torch.Tensor, stop_ids: list[int], grpo: GRPOArgs):
    if rollout.action_masks is not None:  # multi-turn: the sampled tokens of every turn, never environment text
        return action_mask(rollout, index, completion_ids, grpo)
    lengths = torch.tensor([len(rollout.completions[i].token_ids) for i in index], device=completion_ids.device)
    mask = completion_mask(completion_ids, stop_ids, lengths=lengths)
    if grpo.mask_truncated_completions:
        truncated = torch.tensor([_truncated(rollout.completions[i]) for i in index], device=mask.device)
        mask = mask_truncated(mask, truncated)
    return mask


def action_mask(rollout: Rollout, index: list[int], completion_ids: torch.Tensor, grpo: GRPOArgs) -> torch.Tensor:
    mask = torch.zeros(completion_ids.shape, dtype=torch.float32)
    for row, i in enumerate(index):
        m = rollout.action_masks[i]
        mask[row, : len(m)] = torch.tensor(m, dtype=torch.float32)
        if grpo.mask_truncated_completions and _truncated(rollout.completions[i]):
            mask[row] = 0
    return mask.to(completion_ids.device)


def _truncated(completion) -> bool:
    """Hit the token budget: the engine's own finish reason, so stop strings and extra stop ids count as stops."""
    return completion.finish_reason == "length"


@torch.no_grad()
def behaviour_logprobs(model, rollout, grpo, generation, fabric) -> list[torch.Tensor]:
    """Log-probs of the rollout under the weights that sampled it, for the PPO ratio of later iterations."""
    out = []
    pad = unwrap(model).config.pad_token_id or 0
    for index in _micro_batches(len(rollout), grpo.micro_batch_size):
        ids, attn, comp = _pack(rollout, index, pad, fabric.device)
        out.append(completion_logprobs(model, ids, attn, comp.shape[1], generation.temperature).detach())
    return out


def trained_rows(rollout: Rollout, grpo: GRPOArgs, world_size: int, off_policy: bool) -> list[int]:
    """Rows that need a forward/backward pass. With beta = 0 a row whose advantage is exactly 0 has zero loss and
    zero gradient at any ratio, and dapo's normaliser counts every row's tokens anyway, so such rows (e.g. whole
    zero-std groups) are skipped. Only on one process (DDP needs the same number of backward passes on every rank)."""
    every = list(range(len(rollout)))
    if grpo.beta != 0 or grpo.loss_type != "dapo" or world_size > 1 or off_policy:
        return every
    return [i for i in every if rollout.advantages[i] != 0]


def trained_tokens(rollout: Rollout, grpo: GRPOArgs) -> int:
    """The completion tokens the loss trains on this process (dapo's normaliser): every sampled token, only the
    policy's own turns in multi-turn episodes (environment text is masked out of the loss, so it must not dilute it),
    and none of a truncated completion under `mask_truncated_completions`."""
    total = 0
    for i, c in enumerate(rollout.completions):
        if grpo.mask_truncated_completions and _truncated(c):
            continue
        total += sum(rollout.action_masks[i]) if rollout.action_masks is not None else len(c.token_ids)
    return total


def train_step(fabric, state, rollout, grpo, generation, optimizer_args, stop_ids, old_logps) -> dict:
    """One optimizer step over the whole rollout, accumulating gradients over micro-batches."""
    model, optimizer = state["model"], state["optimizer"]
    reference = state["ref_model"]
    pad = unwrap(model).config.pad_token_id or 0
    # Every advantage zero: one row still runs forward and backward, so gradients are exact zeros on exactly the
    # parameters a full pass reaches (None elsewhere) and a mixed-precision GradScaler sees a scaled backward before
    # unscale_. One row is enough for both, and costs a 64th of a full micro-batch.
    rows = trained_rows(rollout, grpo, fabric.world_size, old_logps is not None) or [
        min(range(len(rollout)), key=lambda i: len(rollout.completions[i].token_ids))]
    batches = [rows[i : i + grpo.micro_batch_size] for i in range(0, len(rows), grpo.micro_batch_size)]
    local_tokens = trained_tokens(rollout, grpo)
    global_tokens = fabric.all_reduce(torch.tensor(float(local_tokens), device=fabric.device), reduce_op="sum")
    tokens_per_process = max(float(global_tokens) / fabric.world_size, 1.0)
    advantages = rollout.advantages.to(fabric.device)
    totals: dict[str, float] = {}
    engine = deepspeed_engine(fabric, model)
    for k, index in enumerate(batches):
        ids, attn, comp = _pack(rollout, index, pad, fabric.device)
        mask = _mask(rollout, index, comp, stop_ids, grpo)
        if engine is not None:
            # DeepSpeed's config says one micro-batch per step, so ZeRO-1/2 would treat every backward as a step
            # boundary and keep only the last micro-batch's gradient: mark the boundary ourselves.
            engine.set_gradient_accumulation_boundary(k == len(batches) - 1)
        with fabric.no_backward_sync(model, enabled=k < len(batches) - 1):
            logp = completion_logprobs(model, ids, attn, comp.shape[1], generation.temperature)
            ref_logp = None
            if reference is not None:
                with torch.no_grad():
                    ref_logp = completion_logprobs(reference, ids, attn, comp.shape[1], generation.temperature)
            old = old_logps[k] if old_logps is not None else logp.detach()
            is_weights, is_stats = None, {}
            if state.get("is_correction", "off") != "off":
                is_weights, mask, is_stats = importance_correction(
                    old, sampler_logprobs(rollout, index, comp.shape[1], logp.device), mask, state["is_correction"],
                    grpo.is_cap, grpo.mis_threshold)
            loss, stats = grpo_loss(
                logp, old, ref_logp, advantages[index], mask,
                beta=grpo.beta,
                epsilon_low=grpo.epsilon,
                epsilon_high=grpo.epsilon_high if grpo.epsilon_high is not None else grpo.epsilon,
                loss_type=grpo.loss_type,
                max_completion_length=generation.max_completion_length,
                num_micro_batches=len(batches),
                tokens_per_process=tokens_per_process,
                rows_per_process=len(rows),
                is_weights=is_weights,
            )
            stats.update(is_stats)
            fabric.backward(loss)
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        for name, value in stats.items():
            totals[name] = totals.get(name, 0.0) + float(value) / len(batches)
    fabric.call("on_before_optimizer_step", fabric=fabric, state=state, optimizer=optimizer)
    if optimizer_args.max_grad_norm and not is_deepspeed(fabric):
        totals["grad_norm"] = float(fabric.clip_gradients(model, optimizer, max_norm=optimizer_args.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["scheduler"].step()
    return totals


def _mean_over_processes(fabric, values: dict[str, float]) -> dict[str, float]:
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=fabric.device)
    t = fabric.all_reduce(t, reduce_op="mean")
    return dict(zip(keys, t.tolist()))


def budget_tokens(rollout: Rollout) -> dict[str, float]:
    """Tokens one optimizer pass over the rollout puts through the policy: `train/tokens` (each completion with its
    prompt) and `train/completion_tokens` (the completions alone, where the loss is)."""
    completion = sum(len(c.token_ids) for c in rollout.completions)
    return {"train/tokens": float(sum(len(p) for p in rollout.prompt_ids) + completion),
            "train/completion_tokens": float(completion)}


def step_metrics(fabric, rollout: Rollout, stats: dict, state: dict, train_seconds: float, grpo: GRPOArgs) -> dict:
    rewards = rollout.rewards
    groups = rewards.view(-1, rollout.num_generations)
    lengths = torch.tensor([float(len(c.token_ids)) for c in rollout.completions])
    truncated = torch.tensor([float(c.finish_reason == "length") for c in rollout.completions])
    local = {
        "reward": rewards.mean().item(),
        "reward_std": groups.std(dim=1).mean().item() if rollout.num_generations > 1 else 0.0,
        "frac_reward_zero_std": rollout.zero_std_groups.float().mean().item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": truncated.mean().item(),
        "accuracy": sum(i.p_with for i in rollout.interactions) / len(rollout.interactions),
        **{f"rewards/{k}/mean": v.mean().item() for k, v in rollout.reward_components.items()},
        **{f"time/{k}": v for k, v in rollout.timings.items()},
        **{k: v for k, v in stats.items()},
    }
    local["time/training"] = train_seconds
    metrics = _mean_over_processes(fabric, local)
    metrics["lr"] = state["scheduler"].get_last_lr()[0]
    tokens = {f"tokens/{k}": float(v) for k, v in rollout.generated_tokens.items()} | rollout.verifier  # summed
    tokens |= budget_tokens(rollout)
    summed = {k: v * fabric.world_size for k, v in _mean_over_processes(fabric, tokens | rollout.by_task).items()}
    metrics.update({k: v for k, v in summed.items() if k not in rollout.by_task} | per_task_means(summed))
    return metrics


@torch.no_grad()
def evaluate(fabric, state, runner: RolloutRunner, val_rows, settings, eval_args: EvalArgs, seed: int) -> dict:
    """Fixed-seed held-out rollout: student alone vs teacher + student (or the policy alone for `direct`)."""
    n = min(eval_args.num_prompts, len(val_rows))
    if 0 < n < fabric.world_size:  # a process without prompts would miss the collectives the others wait in
        raise ConfigError(f"evaluation has {n} prompts for {fabric.world_size} processes, and every process needs at "
                          "least one: raise eval.num_prompts (or the validation split)")
    fabric.call("on_validation_start", fabric=fabric, state=state,
                engines={"teacher": runner.policy, "student": runner.student})
    index = list(range(n))[fabric.global_rank :: fabric.world_size]
    rows = [val_rows[i] for i in index]
    metrics: dict[str, float] = {}
    if rows:
        rollout = runner.run(rows, step_seed(seed, 0, fabric.global_rank, salt=1), eval_settings(settings, eval_args))
        fabric.call("on_validation_end", fabric=fabric, state=state, rollout=rollout, metrics=metrics)
        # sums and a count per process, so processes with one prompt fewer do not weigh more
        totals = torch.tensor([sum(i.p_with for i in rollout.interactions), sum(i.p_base for i in rollout.interactions),
                               len(rollout.interactions)], dtype=torch.float64, device=fabric.device)
        correct, base_correct, count = fabric.all_reduce(totals, reduce_op="sum").tolist()
        metrics["eval/accuracy"] = correct / count
        metrics.update(interval_metrics("eval/accuracy", correct, count))
        if "eval/with_teaching_accuracy" in metrics:
            metrics.update(interval_metrics("eval/with_teaching_accuracy", correct, count))
            metrics.update(interval_metrics("eval/baseline_accuracy", base_correct, count))
            metrics.update(interval_metrics("eval/ndr", metrics["eval/ndr"] * count, count))  # one teaching per prompt
        if rollout.by_task:
            keys = sorted(rollout.by_task)
            sums = fabric.all_reduce(torch.tensor([rollout.by_task[k] for k in keys], dtype=torch.float64,
                                                  device=fabric.device), reduce_op="sum").tolist()
            metrics.update(per_task_means(dict(zip(keys, sums)), prefix="eval/"))
    shown = sorted(k for k in metrics if not k.endswith(("_ci_low", "_ci_high")))  # intervals print with their value
    fabric.print(f"eval @ step {state['step']}: " + ", ".join(
        f"{k[5:]} {fmt(metrics[k], metrics.get(f'{k}_ci_low'), metrics.get(f'{k}_ci_high'))}" for k in shown))
    state.setdefault("evals", []).append({"step": state["step"], **metrics})  # this process's, not checkpointed
    trend = trend_line(state["evals"])
    if trend:
        fabric.print(trend)
    if len(state["evals"]) == 1 and (warning := room_warning(state["evals"][0])):
        fabric.print(f"warning: {warning}")
    if eval_args.keep_best:
        keep_if_best(fabric, state, runner.policy.tokenizer, metrics)
    return metrics


def keep_if_best(fabric, state: dict, tokenizer, metrics: dict) -> None:
    key = "eval/with_teaching_accuracy" if "eval/with_teaching_accuracy" in metrics else "eval/accuracy"
    best = state.get("best_eval")
    if key not in metrics or (best is not None and metrics[key] <= best["value"]):
        return
    state["best_eval"] = {"step": state["step"], "metric": key, "value": metrics[key]}
    out = Path(state["out_dir"])
    export_hf(fabric, state["model"], tokenizer, out / "best_hf_model")
    if fabric.global_rank == 0:
        (out / "best.json").write_text(json.dumps(state["best_eval"]) + "\n")


def progress_line(step: int, max_steps: int, m: dict, eta_s: float | None = None) -> str:
    parts = [f"step {step}/{max_steps}", f"reward {m['reward']:.3f}", f"acc {m['accuracy']:.3f}"]
    if "teaching/ndr" in m:
        parts.append(f"base {m['teaching/baseline_accuracy']:.3f}")
        # the degradation window's NDR when it is tracked: one step's NDR swings too much to read
        parts.append(f"ndr(window) {m['teaching/window_ndr']:.3f}" if "teaching/window_ndr" in m
                     else f"ndr {m['teaching/ndr']:.3f}")
    parts.append(f"loss {m.get('loss', float('nan')):.4f}")
    gen = sum(v for k, v in m.items() if k.startswith("time/generation"))
    parts.append(f"gen {gen:.1f}s train {m['time/training']:.1f}s")
    if eta_s is not None:
        parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)


def _record(fabric, path: Path, metrics: dict, step: int) -> None:
    if not metrics:
        return
    fabric.log_dict(metrics, step=step)
    if fabric.global_rank == 0:
        with path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def _checkpoint_view(state: dict) -> dict:
    view = {k: state[k] for k in ("model", "optimizer", "scheduler", "step", "prompts_seen")}
    # the rollout whose remaining num_iterations passes are still to come, so a resume finishes it exactly
    view["pending"] = state["pending"].state_dict() if state.get("pending") is not None else {}
    if "prefetched" in state:  # an async run's rollouts generated for later steps
        prefetched = state["prefetched"]
        view["prefetched"] = prefetched.state_dict() if isinstance(prefetched, RolloutPipeline) else prefetched
    if isinstance(state.get("ref_model"), torch.nn.Module):  # not the policy's disabled adapter (no weights of its own)
        view["ref_model"] = state["ref_model"]
    view.update(ppo_lib.checkpoint_items(state))
    return view


def stop_if_signalled(fabric, state: dict, trainer: TrainerArgs, stop: StopRequest | None) -> None:
    """At a step boundary: when any process got SIGINT/SIGTERM, save a checkpoint (unless this step's is already
    written) and raise TrainingInterrupted on every process."""
    requested = float(stop is not None and stop.requested)
    if fabric.world_size > 1:
        requested = float(fabric.all_reduce(torch.tensor(requested, device=fabric.device), reduce_op="max"))
    if not requested:
        return
    path = checkpoint_path(state)
    if not path.exists():
        path = save_checkpoint(fabric, state, trainer.keep_last_checkpoints)
    for logger in fabric.loggers:
        logger.finalize("interrupted")
    raise TrainingInterrupted(stop.signum or signal.SIGINT, state["step"], path, fabric.global_rank)


def checkpoint_path(state: dict) -> Path:
    return Path(state["out_dir"]) / "checkpoints" / f"step-{state['step']:06d}.ckpt"


def save_checkpoint(fabric, state: dict, keep_last: int) -> Path:
    path = checkpoint_path(state)
    folder = path.parent
    checkpoint = {**_checkpoint_view(state), "rng": torch.get_rng_state()}
    fabric.call("on_save_checkpoint", fabric=fabric, state=state, checkpoint=checkpoint)
    fabric.save(path, checkpoint)
    if fabric.global_rank == 0 and keep_last > 0:
        old = sorted(folder.glob("step-*.ckpt"))[:-keep_last]
        for stale in old:
            if stale.is_dir():
                import shutil

                shutil.rmtree(stale)
            else:
                stale.unlink()
    fabric.barrier()
    return path


def export_hf(fabric, model, tokenizer, out: Path, lora_export: str = "merged") -> None:
    """Save the policy as an HF folder (full weights gathered on rank 0 under sharded strategies); a LoRA policy as
    its merged weights or as its adapter alone (`lora_export`)."""
    from rcl.serving.weights import iter_full_state

    peft = lora_lib.find_peft(model)
    if peft is not None and lora_export == "adapter":
        if fabric.global_rank == 0:
            lora_lib.export_model(peft, tokenizer, out, "adapter")
            fabric.print(f"exported the policy's adapter to {out}")
        fabric.barrier()
        return
    state_dict = dict(iter_full_state(model, fabric))  # a LoRA policy comes out merged, under base names
    if fabric.global_rank == 0:
        (peft.get_base_model() if peft is not None else unwrap(model)).save_pretrained(str(out), state_dict=state_dict)
        tokenizer.save_pretrained(str(out))
        fabric.print(f"exported the policy to {out}")
    fabric.barrier()


def parse_recipe(command: str, argv: list[str], exit_on_error: bool = True) -> dict[str, Any]:
    """`setup`'s arguments from an RL recipe's command line (several --config merged, dotted overrides).

    Flags must be spelled in full (`--grpo.num_generation` is refused, not read as `num_generations`). With
    `exit_on_error=False` a bad recipe raises `argparse.ArgumentError` with a one-line message instead of exiting
    (the CLI prints it; the launcher checks a recipe this way before it starts any server).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    from rcl.cli import help_defaults, refuse_parse_error, show_class_keys_in_help

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=f"python -m rcl {command}", description=__doc__.splitlines()[0],
                            exit_on_error=False, allow_abbrev=False, **help_defaults(argv))
    parser.add_argument("--config", action=ActionConfigFile, help="Recipe YAML (repeat to merge in order).")
    parser.add_function_arguments(setup, skip={"command"})
    # One set of prompt templates per run: the data module's copy follows the loop's.
    parser.link_arguments("templates", "data.init_args.templates")
    show_class_keys_in_help(parser, argv, {"data": TeacherStudentDataModule})
    try:
        init = parser.instantiate_classes(parser.parse_args(argv))
    except argparse.ArgumentError as err:
        refuse_parse_error(parser, err, exit_on_error)
    return {k: v for k, v in vars(init).items() if k not in ("config", "__path__")}


def cli_main(command: str, argv: list[str]) -> None:
    """Parse an RL recipe (several --config merged, dotted overrides, --print_config) and run it."""
    if command not in ("fit", "validate"):
        raise SystemExit(f"rcl: RL recipes support `fit` and `validate`, not `{command}`")
    kwargs = parse_recipe(command, argv)
    try:
        setup(command=command, **kwargs)
    except ConfigError as err:
        raise SystemExit(f"rcl: {err}") from None
    except TrainingInterrupted as err:
        report(err, command, argv)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        latest = latest_checkpoint(Path(kwargs["trainer"].out_dir))
        resume = f"; its last checkpoint resumes with: {resume_command(command, argv, latest)}" if latest else ""
        print(f"rcl: stopped at once, without saving{resume}", file=sys.stderr)
        raise SystemExit(130) from None
