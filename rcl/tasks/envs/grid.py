"""`grid`: BabyAI-like navigation. The agent stands on a square grid facing a direction and must pick up the ball.

Actions: `forward`, `left`, `right` (turn in place), `pickup` (takes the ball in the cell in front), `toggle` (opens
a door in front; this grid has no doors, so it only costs a turn). Reward: `step_reward` for a step that brings the
agent closer to the ball (Manhattan distance), `completion_reward` for picking it up.

Observations give the ball either in grid coordinates (the agent's cell and facing, the ball's cell) or, with
`egocentric`, relative to the agent ("ball 2 ahead, 1 left"), as BabyAI's agent-centred view does. The absolute form
asks the policy to work out the ball's bearing from four numbers and a letter; the egocentric one states it, and is
what the scripted expert decides on (tested: states with the same egocentric observation get the same optimal
action).
"""

from __future__ import annotations

from string import ascii_lowercase

from rcl.tasks.base import register_task
from rcl.tasks.envs.base import ToyEnvironment

DIRECTIONS = ("north", "east", "south", "west")
MOVES = {"north": (0, -1), "east": (1, 0), "south": (0, 1), "west": (-1, 0)}
ACTIONS = ("forward", "left", "right", "pickup", "toggle")


def char_action(char: str) -> str:
    """The action a character reads as with `char_actions`: its code point modulo 5 indexes ACTIONS."""
    return ACTIONS[ord(char) % len(ACTIONS)]


@register_task("grid")
class GridEnv(ToyEnvironment):
    max_turns = 20

    def __init__(self, size: int = 5, terse: bool = False, char_actions: bool = False, egocentric: bool = False,
                 **kwargs):
        """
        Args:
            size: Side of the square grid.
            terse: Short observations ("at 2,1 facing E; ball 3,3"), for tiny models and short CPU runs.
            char_actions: Any first character is an action: its code point modulo 5 indexes (forward, left, right,
                pickup, toggle), so every one-token answer acts and a tiny model only has to learn which characters
                mean what (named actions are still read as such).
            egocentric: Describe the ball relative to the agent (steps ahead or behind, left or right) instead of
                giving both positions in grid coordinates.
            **kwargs: max_turns, step_reward, completion_reward.
        """
        super().__init__(**kwargs)
        self.size, self.terse, self.char_actions, self.egocentric = size, terse, char_actions, egocentric

    def start(self) -> str:
        cells = [(x, y) for x in range(self.size) for y in range(self.size)]
        self.agent, self.ball = self.rng.sample(cells, 2)
        self.facing = self.rng.choice(DIRECTIONS)
        if self.terse:
            return f"grid {self.size}; {self.describe()}"
        return (f"Pick up the ball. Actions: {', '.join(ACTIONS)}. The grid is {self.size}x{self.size}, x grows east "
                f"and y grows south.\n{self.describe()}")

    def bearing(self) -> tuple[int, int]:
        """The ball relative to the agent: (steps ahead, negative behind; steps to the right, negative left)."""
        dx, dy = self.ball[0] - self.agent[0], self.ball[1] - self.agent[1]
        mx, my = MOVES[self.facing]
        return dx * mx + dy * my, dx * -my + dy * mx  # right of (mx, my) is (-my, mx) with y growing south

    def describe(self) -> str:
        if self.egocentric:
            ahead, right = self.bearing()
            parts = ([f"{abs(ahead)} {'ahead' if ahead > 0 else 'behind'}"] if ahead else []) + \
                ([f"{abs(right)} {'right' if right > 0 else 'left'}"] if right else [])
            if self.terse:
                return "ball " + ", ".join(parts)
            return f"The ball is {' and '.join(parts)} of you."
        if self.terse:
            (x, y), (bx, by) = self.agent, self.ball
            return f"at {x},{y} facing {self.facing[0].upper()}; ball {bx},{by}"
        return (f"You are at ({self.agent[0]},{self.agent[1]}) facing {self.facing}. "
                f"The ball is at ({self.ball[0]},{self.ball[1]}).")

    def distance(self) -> int:
        return abs(self.agent[0] - self.ball[0]) + abs(self.agent[1] - self.ball[1])

    def front(self) -> tuple[int, int]:
        dx, dy = MOVES[self.facing]
        return self.agent[0] + dx, self.agent[1] + dy

    def apply(self, action: str) -> tuple[str, float, bool, dict]:
        action = action.lower().split()[0] if action.split() else ""
        if self.char_actions and action not in ACTIONS and action:
            action = char_action(action[0])
        before = self.distance()
        if action == "pickup":
            if self.front() == self.ball:
                return "You picked up the ball.", self.completion_reward, True, {"success": True}
            return f"There is nothing to pick up. {self.describe()}", 0.0, False, {}
        if action == "forward":
            x, y = self.front()
            if 0 <= x < self.size and 0 <= y < self.size and (x, y) != self.ball:
                self.agent = (x, y)
        elif action in ("left", "right"):
            turn = -1 if action == "left" else 1
            self.facing = DIRECTIONS[(DIRECTIONS.index(self.facing) + turn) % 4]
        elif action == "toggle":
            return f"There is nothing to toggle. {self.describe()}", 0.0, False, {}
        else:
            hint = "" if self.terse else f"Actions: {', '.join(ACTIONS)}. "
            return f"Unknown action. {hint}{self.describe()}", 0.0, False, {"invalid": True}
        reward = self.step_reward if self.distance() < before else 0.0
        return self.describe(), reward, False, {}

    def optimal_action(self) -> str:
        if self.front() == self.ball:
            return "pickup"
        dx, dy = self.ball[0] - self.agent[0], self.ball[1] - self.agent[1]
        wanted = [d for d, (mx, my) in MOVES.items() if (mx and mx * dx > 0) or (my and my * dy > 0)]
        if self.facing in wanted:
            return "forward"
        # the fewest turns to face a way that closes in (turning around goes right); by the bearing alone, so the
        # expert acts the same in every state that looks the same from where the agent stands
        turns = [(DIRECTIONS.index(d) - DIRECTIONS.index(self.facing)) % 4 for d in wanted]
        turn = min(turns, key=lambda t: (min(t, 4 - t), t))
        return "right" if turn in (1, 2) else "left"

    def actions(self) -> list[str]:
        return list(ACTIONS)

    def action_text(self, action: str) -> str:
        """With `char_actions`, the first lowercase letter that reads as `action` (forward d, left e, right a,
        pickup b, toggle c): one token, as a model that answers with one token per turn writes it."""
        if not self.char_actions:
            return action
        return next(c for c in ascii_lowercase if char_action(c) == action)
