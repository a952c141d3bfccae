"""What the toy environments share: rows that are seeds, shaped rewards, scripted policies, and an episode runner.

A toy environment is deterministic by seed: `reset(row, seed)` builds the episode from `row["seed"]` (and `seed`), and
the same actions always give the same observations and rewards. Each one ships two scripted policies, `optimal_action`
and `random_action`, whose returns are tested, so a learning curve can be read against both ends; `scripted_policy`
mixes them (an epsilon-noisy expert), which is what SFT data from an environment plays (`dataset: environment`).
Rewards follow the guide's shaping: a small per-step reward for progress plus a completion reward at the end.
"""

from __future__ import annotations

import random
import zlib
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from rcl.tasks.base import Environment, StepResult


@dataclass
class EpisodeResult:
    rewards: list[float] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    success: bool = False

    @property
    def total(self) -> float:
        return sum(self.rewards)


class ToyEnvironment(Environment):
    """Base of the toy environments: subclasses implement `start`, `apply`, `optimal_action` and `actions`."""

    max_turns: int = 10

    def __init__(self, max_turns: int | None = None, step_reward: float = 0.1, completion_reward: float = 1.0):
        if max_turns is not None:
            self.max_turns = max_turns
        self.step_reward = step_reward
        self.completion_reward = completion_reward
        self.turns = 0
        self.done = False

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        """One row per episode seed; the splits use disjoint seed ranges."""
        offset = {"train": 0, "val": 1_000_000, "test": 2_000_000}[split]
        return [{"question": f"{self.name} episode {i}", "seed": offset + seed * 10_000 + i} for i in range(num or 256)]

    def reset(self, row: dict, seed: int = 0) -> str:
        self.turns, self.done = 0, False
        # rows of a dataset without a `seed` field (e.g. the synthetic additions) still give distinct episodes
        base = int(row["seed"]) if "seed" in row else zlib.crc32(str(row.get("question", "")).encode())
        self.rng = random.Random(base * 1_000_003 + seed)
        return self.start()

    def step(self, action: str) -> StepResult:
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset()")
        self.turns += 1
        observation, reward, done, info = self.apply(action.strip())
        if not done and self.turns >= self.max_turns:
            done, info = True, {**info, "truncated": True}
        self.done = done
        return StepResult(observation if not done else "", reward, done, info)

    @abstractmethod
    def start(self) -> str:
        """Build the episode from `self.rng`; the first observation."""

    @abstractmethod
    def apply(self, action: str) -> tuple[str, float, bool, dict]:
        """(observation, reward, done, info) of one action; info["success"] on the completing step."""

    @abstractmethod
    def optimal_action(self) -> str:
        """The scripted optimal policy's next action in the current state."""

    @abstractmethod
    def actions(self) -> list[str]:
        """Valid actions in the current state (the random policy picks among them)."""

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(self.actions())

    def action_text(self, action: str) -> str:
        """How a model writes `action` (one of `actions()`), e.g. in scripted SFT data: the action itself, unless
        the environment reads its actions in another form."""
        return action


def run_episode(env: Environment, policy: Callable[[Environment, str], str], row: dict, seed: int = 0
                ) -> EpisodeResult:
    """Play one episode with `policy(env, observation) -> action` for at most `env.max_turns` actions."""
    result = EpisodeResult()
    observation = env.reset(row, seed)
    for _ in range(env.max_turns):
        action = policy(env, observation)
        step = env.step(action)
        result.rewards.append(step.reward)
        result.actions.append(action)
        observation = step.observation
        if step.done:
            result.success = bool(step.info.get("success"))
            break
    return result


def optimal_policy(env: ToyEnvironment, observation: str) -> str:
    return env.optimal_action()


def scripted_policy(epsilon: float = 0.0, seed: int = 0) -> Callable[[ToyEnvironment, str], str]:
    """The optimal policy, except that each action is a uniformly random one with probability `epsilon` (an
    imperfect expert, for SFT data that leaves RL room to improve), written as `env.action_text` writes it."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    rng = random.Random(seed)

    def act(env: ToyEnvironment, observation: str) -> str:
        noisy = rng.random() < epsilon
        return env.action_text(env.random_action(rng) if noisy else env.optimal_action())

    return act


def random_policy(seed: int) -> Callable[[ToyEnvironment, str], str]:
    rng = random.Random(seed)
    return lambda env, observation: env.random_action(rng)
