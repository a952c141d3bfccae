"""Tasks and environments: `get_task(name)`, `register_task(name)`. See rcl.tasks.base."""

from rcl.tasks.base import Environment, Score, StepResult, Task, available_tasks, get_task, register_task
from rcl.tasks import code  # noqa: F401  (registers "code")

__all__ = ["Environment", "Score", "StepResult", "Task", "available_tasks", "get_task", "register_task"]
