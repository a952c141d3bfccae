"""The task layer: one concept for single- and multi-turn environments, and one registry.

An environment is a source of rows, a way to render a row as the first observation (the prompt), and a way to score
what the policy wrote. A single-turn task is an environment whose first `step` ends the episode: `Task` implements
`reset`/`step` on top of `prompt`/`score`, so the RL loop, `rcl score` and `rcl evaluate` talk to one interface.

Rows are plain dicts. Every row has `question` (the text the prompt templates place as {question}); tasks add their
own fields (`ground_truth` for math, `tests`/`test`/`entry_point` for code, ...), documented on the task class.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Score:
    """How one completion did on one row."""

    reward: float
    """The task's correctness reward (partial credit allowed, e.g. tests passed), before recipe weights."""
    correct: bool
    """All-or-nothing correctness: what accuracy, pass@k and NDR count."""
    details: dict[str, Any] = field(default_factory=dict)
    """Verifier details, JSON-serialisable: the extracted answer, tests passed/total, the outcome class, errors.
    Conventions: `outcome` names the class (`no_answer` when nothing scorable was found), `error` is set when the
    check could not be made (and `outcome` is then `error` or `timeout`)."""

    @property
    def has_answer(self) -> bool:
        """Whether the completion held something to score (what the completion rate counts)."""
        return self.details.get("outcome") not in ("no_answer", "bad_format")


@dataclass(frozen=True)
class StepResult:
    observation: str
    """The next text the environment shows the policy ("" once done)."""
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """A (possibly multi-turn) text environment. Subclass it in `experiments/` and register it with `register_task`.

    Episodes: `obs = env.reset(row, seed)`, then `env.step(action_text)` until `done` or `max_turns` actions.
    Per-step rewards are aggregated by the caller (`last` or `sum`).
    """

    name: ClassVar[str] = ""
    max_turns: int = 1
    fields: ClassVar[tuple[str, ...]] = ()
    """Row fields the task reads besides `question` (e.g. ground_truth, tests): RL rows carry them through."""

    @abstractmethod
    def reset(self, row: dict, seed: int = 0) -> str:
        """Start an episode on `row`; returns the first observation."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply the policy's text; returns the next observation, this step's reward and whether the episode ended."""

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        """The task's own rows for `split` ("train", "val", "test"), for tasks that generate or ship data."""
        raise NotImplementedError(f"task {self.name!r} has no built-in rows; give the recipe a dataset")


class Task(Environment):
    """A single-turn task: the prompt is `prompt(row)`, and one completion is scored by `score`."""

    def prompt(self, row: dict) -> str:
        """The text placed as {question} in the prompt templates."""
        return row["question"]

    @abstractmethod
    def score(self, completion: str, row: dict) -> Score:
        """Score one completion for `row`. Must not raise for any model output; a verifier failure is reported in
        `details["error"]` (and counted by the caller), never silently as a wrong answer."""

    def gold_completion(self, row: dict) -> str:
        """A completion that must score as correct on `row` (the reward self-test runs the recipe's rewards on it)."""
        raise NotImplementedError(f"task {self.name!r} has no gold_completion, which the reward self-test needs")

    def format_only_completion(self, row: dict) -> str:
        """A completion with the task's output format and no right answer (default: a wrong gold of another row is
        used by the self-test instead, so this is only the empty shape)."""
        return ""

    def reset(self, row: dict, seed: int = 0) -> str:
        self._row = row
        return self.prompt(row)

    def step(self, action: str) -> StepResult:
        score = self.score(action, self._row)
        return StepResult("", score.reward, True, {"correct": score.correct, **score.details})


_TASKS: dict[str, Callable[..., Environment]] = {}


def register_task(name: str) -> Callable[[Callable[..., Environment]], Callable[..., Environment]]:
    """Class decorator: `get_task(name, **kwargs)` builds the class with those kwargs."""

    def decorator(factory: Callable[..., Environment]) -> Callable[..., Environment]:
        if name in _TASKS:
            raise ValueError(f"a task named {name!r} is already registered")
        _TASKS[name] = factory
        if isinstance(factory, type):
            factory.name = name
        return factory

    return decorator


def get_task(name: str, **kwargs: Any) -> Environment:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return _TASKS[name](**kwargs)


def available_tasks() -> list[str]:
    return sorted(_TASKS)


@dataclass
class TaskArgs:
    """The task: how rows are prompted and completions scored (rcl.tasks; `python -m rcl score` takes the same)."""

    name: str = "arithmetic"
    """A registered task: arithmetic, math, gsm8k, or one that `module` registers."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task, e.g. {strict: true, format: think_answer, format_mode: gate} for math."""
    module: str | None = None
    """A module to import first, which registers the task with `rcl.tasks.register_task` (e.g. experiments.my_task)."""

    def build(self) -> Environment:
        if self.module:
            importlib.import_module(self.module)
        return get_task(self.name, **self.kwargs)
