"""`craft`: TextCraft-like crafting. Obtain the goal item by getting base items and crafting intermediate ones.

Actions: `get <item>` (base items only) and `craft <item>` (needs its ingredients in the inventory, which it uses
up). Reward: `step_reward` for obtaining an item the goal still needs, `completion_reward` for crafting the goal.
"""

from __future__ import annotations

from collections import Counter

from rcl.tasks.base import register_task
from rcl.tasks.envs.base import ToyEnvironment

RECIPES: dict[str, dict[str, int]] = {
    "planks": {"log": 1},
    "stick": {"planks": 1},
    "torch": {"stick": 1, "coal": 1},
    "table": {"planks": 2},
    "pickaxe": {"planks": 2, "stick": 2},
    "lantern": {"torch": 1, "iron": 1},
}
BASE = ("log", "coal", "iron", "stone")


def needs(item: str, count: int = 1) -> Counter:
    """Every item (base and intermediate) consumed on the way to `count` x `item`, the item itself included."""
    total: Counter = Counter({item: count})
    for ingredient, k in RECIPES.get(item, {}).items():
        total += needs(ingredient, k * count)
    return total


@register_task("craft")
class CraftEnv(ToyEnvironment):
    max_turns = 16

    def __init__(self, step_reward: float = 0.15, **kwargs):
        super().__init__(step_reward=step_reward, **kwargs)

    def start(self) -> str:
        self.goal = self.rng.choice(sorted(RECIPES))
        self.inventory: Counter = Counter()
        self.still_needed = needs(self.goal)
        book = "; ".join(f"{item} <- " + " + ".join(f"{k} {i}" for i, k in r.items()) for item, r in RECIPES.items())
        return (f"Craft {self.goal}. Actions: get <{'|'.join(BASE)}>, craft <item>. Recipes: {book}.\n"
                f"{self.describe()}")

    def describe(self) -> str:
        held = ", ".join(f"{k} {i}" for i, k in sorted(self.inventory.items()) if k) or "nothing"
        return f"Inventory: {held}."

    def _obtained(self, item: str, count: int) -> float:
        useful = min(count, self.still_needed[item])
        self.still_needed[item] -= useful
        return self.step_reward if useful > 0 else 0.0

    def apply(self, action: str) -> tuple[str, float, bool, dict]:
        verb, _, item = action.lower().partition(" ")
        item = item.strip()
        if verb == "get" and item in BASE:
            self.inventory[item] += 1
            return f"Got {item}. {self.describe()}", self._obtained(item, 1), False, {}
        if verb == "craft" and item in RECIPES:
            missing = [i for i, k in RECIPES[item].items() if self.inventory[i] < k]
            if missing:
                return f"Cannot craft {item}: missing {', '.join(missing)}. {self.describe()}", 0.0, False, {}
            self.inventory -= Counter(RECIPES[item])
            self.inventory[item] += 1
            if item == self.goal:
                return f"Crafted {item}.", self.completion_reward, True, {"success": True}
            return f"Crafted {item}. {self.describe()}", self._obtained(item, 1), False, {}
        return f"Invalid action. {self.describe()}", 0.0, False, {"invalid": True}

    def optimal_action(self) -> str:
        return self._next_for(self.goal)

    def _next_for(self, item: str) -> str:
        """Depth first: the first missing ingredient's next action, else craft the item."""
        for ingredient, k in RECIPES[item].items():
            if self.inventory[ingredient] < k:
                return f"get {ingredient}" if ingredient in BASE else self._next_for(ingredient)
        return f"craft {item}"

    def actions(self) -> list[str]:
        return [f"get {b}" for b in BASE] + [f"craft {r}" for r in RECIPES]
