"""Tasks and environments: `get_task(name)`, `register_task(name)`. See rcl.tasks.base.

Built-in tasks: `arithmetic` (rcl.tasks.arithmetic), `math` and `gsm8k` (rcl.tasks.math_task).
"""

from rcl.tasks.base import Environment, Score, StepResult, Task, TaskArgs, available_tasks, get_task, register_task
from rcl.tasks import arithmetic, math_task  # noqa: F401,E402  (registers the built-in tasks)

__all__ = ["Environment", "Score", "StepResult", "Task", "TaskArgs", "available_tasks", "get_task", "register_task"]
