"""`shop`: WebShop-like search and click. Find and buy the product the instruction describes.

Actions: `search[<words>]` lists the products matching every word, `click[<id>]` opens one, `buy` buys the open
product, `back` returns to the search. Rewards follow the guide's WebShop shaping: 0.1 for a search whose results
hold the target, 0.3 for opening the target, the completion reward (1.0) for buying it; buying another product ends
the episode with 0.
"""

from __future__ import annotations

from rcl.tasks.base import register_task
from rcl.tasks.envs.base import ToyEnvironment

COLOURS = ("red", "blue", "green", "black")
KINDS = ("shirt", "mug", "lamp", "bag")
SIZES = ("small", "large")


@register_task("shop")
class ShopEnv(ToyEnvironment):
    max_turns = 8

    def __init__(self, search_reward: float = 0.1, click_reward: float = 0.3, **kwargs):
        super().__init__(**kwargs)
        self.search_reward, self.click_reward = search_reward, click_reward

    def start(self) -> str:
        products = [(c, k, s) for c in COLOURS for k in KINDS for s in SIZES]
        self.rng.shuffle(products)
        self.catalog = {f"P{i:02d}": {"colour": c, "kind": k, "size": s, "price": 5 + self.rng.randrange(40)}
                        for i, (c, k, s) in enumerate(products)}
        self.target = self.rng.choice(sorted(self.catalog))
        self.results: list[str] = []
        self.open: str | None = None
        self.rewarded: set[str] = set()
        t = self.catalog[self.target]
        return (f"Instruction: buy a {t['size']} {t['colour']} {t['kind']}. Actions: search[words], click[id], buy, "
                "back.")

    def _title(self, pid: str) -> str:
        p = self.catalog[pid]
        return f"{pid} {p['size']} {p['colour']} {p['kind']} ${p['price']}"

    def _once(self, what: str, reward: float) -> float:
        if what in self.rewarded:
            return 0.0
        self.rewarded.add(what)
        return reward

    def apply(self, action: str) -> tuple[str, float, bool, dict]:
        a = action.strip()
        low = a.lower()
        if low.startswith("search[") and low.endswith("]"):
            words = low[7:-1].split()
            self.results = [pid for pid, p in sorted(self.catalog.items())
                            if all(w in (p["colour"], p["kind"], p["size"]) for w in words)][:5]
            self.open = None
            reward = self._once("search", self.search_reward) if self.target in self.results else 0.0
            listing = "; ".join(self._title(pid) for pid in self.results) or "no results"
            return f"Results: {listing}.", reward, False, {}
        if low.startswith("click[") and low.endswith("]"):
            pid = a[6:-1].strip().upper()
            if pid not in self.results:
                return "No such result.", 0.0, False, {"invalid": True}
            self.open = pid
            reward = self._once("click", self.click_reward) if pid == self.target else 0.0
            return f"Product page: {self._title(pid)}. Actions: buy, back.", reward, False, {}
        if low == "buy" and self.open is not None:
            success = self.open == self.target
            return "Bought.", self.completion_reward if success else 0.0, True, {"success": success}
        if low == "back":
            self.open = None
            return "Back to the search page.", 0.0, False, {}
        return "Invalid action.", 0.0, False, {"invalid": True}

    def optimal_action(self) -> str:
        t = self.catalog[self.target]
        if self.open == self.target:
            return "buy"
        if self.target in self.results:
            return f"click[{self.target}]"
        return f"search[{t['size']} {t['colour']} {t['kind']}]"

    def actions(self) -> list[str]:
        words = [f"search[{w}]" for w in COLOURS + KINDS]
        clicks = [f"click[{pid}]" for pid in self.results]
        return words + clicks + (["buy", "back"] if self.open else [])
