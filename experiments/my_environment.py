"""An example of a user's own multi-turn environment: subclass, register, point a recipe at this module.

    python -m rcl fit --config lightning_configs/quickstart_grid.yaml --task.module experiments.my_environment \
        --task.name countdown --task.kwargs '{}'

`countdown`: the environment says a number n; the policy must answer n - 1, then that minus one, down to 0. Each
right answer pays `step_reward`, reaching 0 pays `completion_reward`, a wrong answer ends the episode. The base class
gives the seeded RNG (`self.rng`), the turn limit, rows of seeds and the shaped-reward conventions; `optimal_action`
and `actions` are the scripted policies the tests compare against.
"""

from __future__ import annotations

from rcl.tasks import register_task
from rcl.tasks.envs.base import ToyEnvironment


@register_task("countdown")
class CountdownEnv(ToyEnvironment):
    max_turns = 6

    def start(self) -> str:
        self.n = self.rng.randint(2, self.max_turns)
        return f"Count down from {self.n} to 0, one number per turn. Next:"

    def apply(self, action: str) -> tuple[str, float, bool, dict]:
        want = self.n - 1
        if action.strip() != str(want):
            return "", 0.0, True, {"success": False}
        self.n = want
        if want == 0:
            return "", self.completion_reward, True, {"success": True}
        return f"{want}. Next:", self.step_reward, False, {}

    def optimal_action(self) -> str:
        return str(self.n - 1)

    def actions(self) -> list[str]:
        return [str(k) for k in range(self.max_turns + 1)]
