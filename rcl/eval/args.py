"""Typed argument groups of `python -m rcl evaluate`. Their attribute docstrings are the `--help` text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from data_modules.teacher_student import TeacherStudentDataModule
from rcl.prompts import MissingTeaching
from rcl.rl.args import EngineArgs, ModelArgs

Protocol = Literal["direct", "adaptive_teaching"]


@dataclass
class EvalModel:
    """One evaluated model: a local HF folder, a hub id, a run folder (its `hf_model` is used), a tiny preset, or
    servers (`engine.backend: server`; `model` then names the tokenizer)."""

    name: str
    """Label in results, tables and plots (unique)."""
    model: ModelArgs = field(default_factory=ModelArgs)
    engine: EngineArgs = field(default_factory=EngineArgs)
    protocols: list[Protocol] = field(default_factory=lambda: ["direct"])
    """direct: the model answers; adaptive_teaching: the model teaches `student` (student alone vs teacher +
    student on the same problems)."""


@dataclass
class EvalTask:
    """One task and the rows it is evaluated on."""

    name: str
    """Task registry name (rcl.tasks.get_task)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Task constructor arguments."""
    module: str | None = None
    """A module to import first, which registers the task (e.g. experiments.my_task)."""
    label: str | None = None
    """Name in results (default: `name`); two entries of one task need different labels."""
    split: str = "test"
    """The task's own split (task.rows), when no `data` is given."""
    num_rows: int | None = 100
    """Problems to evaluate (null: all)."""
    seed: int = 0
    """Seed of the task's row selection."""
    samples: int = 4
    """Samples per problem (pass@k needs k of them)."""
    data: TeacherStudentDataModule | None = None
    """Rows from a data module instead (the RL recipes' `data:` shape, e.g. class_path
    data_modules.TeacherStudentDataModule); `data_split` of its `rl_dataset` is used."""
    data_split: Literal["train", "val"] = "val"

    @property
    def key(self) -> str:
        return self.label or self.name

    def build(self) -> Any:
        """The task, built as the RL loop and `rcl score` build theirs."""
        from rcl.tasks import TaskArgs

        return TaskArgs(self.name, self.kwargs, self.module).build()


@dataclass
class EvalTeaching:
    """The adaptive_teaching protocol's settings besides sampling (the RL loop's `grpo` keys of the same names)."""

    max_probe_tokens: int = 50
    """Cap of the student's diagnostic approach."""
    missing_teaching: MissingTeaching = "strip_thinking"
    """What the student sees when a teaching lacks <teaching> tags."""


@dataclass
class EvalStats:
    ci_level: float = 0.8
    """Level of every interval (0.8: the 10th to 90th percentile)."""
    pass_k: list[int] = field(default_factory=lambda: [1])
    """k of pass@k (each over the problems with at least k samples)."""
    bootstrap_resamples: int = 2000
    """Resamples of the bootstrap intervals over problems."""
    bootstrap_seed: int = 0


@dataclass
class EvalRun:
    out_dir: str = "runs/eval"
    """Where generations/, samples.jsonl, results.json, report.md and the plots go."""
    phase: Literal["all", "generate", "score"] = "all"
    """generate: write completions (resumable); score: score written completions and report; all: both."""
    seed: int = 0
    """Every request's seed derives from it, the task and the chunk, so a rerun regenerates the same samples."""
    device: str = "cpu"
    """Where in-process models run: cpu, cuda, cuda:1, ..."""
    rows_per_chunk: int = 16
    """Problems per generation request; a chunk is written whole, so a killed run loses at most the chunk in flight."""
    plots: bool = True
    """Write the PNG plots."""
    progress: bool = True
    """Show a progress bar over samples."""
