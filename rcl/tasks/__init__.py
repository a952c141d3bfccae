"""Tasks and environments: `get_task(name)`, `register_task(name)`. See rcl.tasks.base.

Built-in tasks: `arithmetic` (rcl.tasks.arithmetic), `math` and `gsm8k` (rcl.tasks.math_task); `code`, `deduction`,
`abduction`, `sat` and their `mixture`, which run or check programs (rcl.tasks.code and its neighbours, with the
sandbox in rcl.sandbox).
"""

from rcl.tasks.base import Environment, Score, StepResult, Task, TaskArgs, available_tasks, get_task, register_task
from rcl.tasks import arithmetic, math_task  # noqa: F401,E402  (registers the built-in tasks)
from rcl.tasks import abduction, code, deduction, mixture, sat  # noqa: F401,E402  (registers the program tasks)

__all__ = ["Environment", "Score", "StepResult", "Task", "TaskArgs", "available_tasks", "get_task", "register_task"]
