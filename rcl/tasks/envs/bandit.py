"""`bandit`: a one-turn multi-armed bandit over the first character the policy writes.

Each arm is a character; pulling it (starting the answer with it) pays the arm's fixed reward, anything else pays 0.
With the default arms (the five vowels, 1.0 each) a uniformly random first character pays about 5 / vocabulary-size
in expectation, so a learning algorithm has a clear, cheap signal to climb (the PPO-vs-random test uses it).
"""

from __future__ import annotations

from rcl.tasks.base import Score, Task, register_task


@register_task("bandit")
class BanditTask(Task):
    def __init__(self, arms: dict[str, float] | None = None, instruction: str = "Pick an arm."):
        """
        Args:
            arms: character -> reward of starting the answer with it (case-insensitive; default: vowels pay 1.0).
            instruction: The prompt text (the same for every row).
        """
        self.arms = {k.lower(): float(v) for k, v in (arms or dict.fromkeys("aeiou", 1.0)).items()}
        self.instruction = instruction

    def prompt(self, row: dict) -> str:
        return self.instruction

    def arm(self, completion: str) -> str:
        text = completion.strip()
        return text[:1].lower()

    def score(self, completion: str, row: dict) -> Score:
        pulled = self.arm(completion)
        reward = self.arms.get(pulled, 0.0)
        best = max(self.arms.values())
        return Score(reward, reward == best, {"arm": pulled, "outcome": "pulled" if pulled else "no_answer"})

    def gold_completion(self, row: dict) -> str:
        return max(self.arms, key=self.arms.get)

    def rows(self, split: str, num: int | None = None, seed: int = 0) -> list[dict]:
        return [{"question": self.instruction} for _ in range(num or 64)]
