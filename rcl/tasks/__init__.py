"""Tasks and environments: `get_task(name)`, `register_task(name)`. See rcl.tasks.base."""

from rcl.tasks.base import Environment, Score, StepResult, Task, available_tasks, get_task, register_task
from rcl.tasks import abduction, code, deduction, mixture, sat  # noqa: F401  (register their tasks)

__all__ = ["Environment", "Score", "StepResult", "Task", "available_tasks", "get_task", "register_task"]
