"""The study's typed config: `python -m experiments.sft_vs_rlvr --config <study recipe>`; the attribute docstrings
are the `--help` text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BudgetMeasure = Literal["optimizer_steps", "training_samples"]


@dataclass
class Budget:
    """What the two arms get the same amount of. The other measures are recorded next to it in study.json."""

    measure: BudgetMeasure = "training_samples"
    """optimizer_steps: the same number of optimizer steps; training_samples: the same number of training prompts
    (SFT examples; RLVR prompts, each sampled `grpo.num_generations` times). Must divide by each arm's samples per
    step (SFT batch x accumulation x devices; RLVR prompts_per_step)."""
    value: int = 480
    """How much of it each arm gets."""


@dataclass
class Arms:
    """The arms' ordinary recipes; the study overrides only the base model, the step budget, the seed, the folders,
    the in-training evaluation cadence and the loggers."""

    base_recipe: str | None = None
    """SFT recipe that makes the base checkpoint from scratch (null: `base_model` is the base)."""
    base_model: str | None = None
    """The base checkpoint when there is no base recipe (hub id, HF folder or tiny preset)."""
    sft_recipe: str = ""
    """SFT recipe of the SFT arm (gold solutions, the SFT LightningModule)."""
    rlvr_recipe: str = ""
    """RL recipe of the RLVR arm (grpo.protocol direct, the task's verifier reward)."""
    eval_recipe: str = ""
    """`rcl evaluate` recipe; the study replaces its `models` with sft, rlvr and base, in that order."""
    base_args: list[str] = field(default_factory=list)
    """Extra flags of the base run (after the study's own), e.g. [--trainer.max_steps, "20"]."""
    sft_args: list[str] = field(default_factory=list)
    """Extra flags of the SFT arm's run."""
    rlvr_args: list[str] = field(default_factory=list)
    """Extra flags of the RLVR arm's run."""
    eval_args: list[str] = field(default_factory=list)
    """Extra flags of the evaluation (`python -m rcl evaluate --config <the study's copy> ...`)."""
    sft_command: list[str] = field(default_factory=lambda: ["fit"])
    """`python -m rcl <this> --config <sft_recipe> ...`."""
    rlvr_command: list[str] = field(default_factory=lambda: ["fit"])
    """`python -m rcl <this> --config <rlvr_recipe> ...` (e.g. launch --teacher-gpus 0 --train-gpus 1-3)."""


@dataclass
class Report:
    main_task: str = "heldout"
    """Eval task label of the headline numbers and the paired difference."""
    ood_task: str | None = "ood_3digit"
    """Eval task label of the out-of-distribution check (null: none)."""
    target_accuracy: float = 0.5
    """Sample efficiency: the budget at which each arm's held-out curve first reaches this."""
    curve_points: int = 4
    """In-training held-out evaluations per arm (besides the one before training), evenly spaced in steps."""
    error_examples: int = 3
    """Examples shown per error pattern."""
    top_layers: int = 10
    """Most changed tensors listed per arm."""


@dataclass
class Study:
    name: str = "sft_vs_rlvr"
    """Study name: the W&B group of both arms."""
    out_dir: str = "runs/sft_vs_rlvr"
    """base/, seed-<seed>/{sft,rlvr,eval}/, study.json, report.md and the plots."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """One study per seed (both arms share it); the report gives the spread over seeds. The base is made once."""
    reuse_base: bool = True
    """Keep an existing base/hf_model instead of remaking it."""
    wandb: bool = False
    """W&B loggers for both arms (WANDB_MODE=offline works), grouped under `name`; CSV and TensorBoard always."""
    budget: Budget = field(default_factory=Budget)
    arms: Arms = field(default_factory=Arms)
    report: Report = field(default_factory=Report)
