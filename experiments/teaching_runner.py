"""What the teaching experiments share: a rollout runner for a teacher and a student checkpoint, with the settings of
an RL recipe, and the synthetic problems no SFT or RL run has seen (the final test split)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

RECIPE = "lightning_configs/quickstart_rcl.yaml"


def recipe_args(recipe: str = RECIPE, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The RL recipe's argument groups, parsed by the RL entry point itself."""
    from rcl.rl.loop import parse_recipe

    return parse_recipe("fit", ["--config", recipe, *overrides])


def build_runner(teacher_path: str, student_path: str, args: dict[str, Any], reward_functions: dict | None = None):
    """(runner, settings) for the recipe's protocol, task, templates and sampling, on in-process engines."""
    from rcl.rewards import get_reward
    from rcl.rl.args import EngineArgs, ModelArgs
    from rcl.rl.loop import build_engine, build_task, load_causal_lm, load_tokenizer, rollout_settings
    from rcl.rl.rollout import RolloutRunner

    reward = args["reward"]
    functions = dict(reward.functions) if reward_functions is None else reward_functions
    rewards = {name: get_reward(name, **reward.kwargs.get(name, {})) for name in functions}
    engines = []
    for path in (teacher_path, student_path):
        model_args = replace(args["teacher"], model_name_or_path=path)
        engines.append(build_engine(EngineArgs(), load_causal_lm(model_args, trainable=False), load_tokenizer(model_args)))
    runner = RolloutRunner(engines[0], engines[1], args["templates"], rewards, functions, build_task(args["task"]))
    return runner, rollout_settings(args["grpo"], args["generation"])


def unseen_problems(num: int, synthetic_size: int, seed: int = 0, levels: tuple[int, ...] = (1, 2)) -> list[dict]:
    """`num` task rows the data module never drew: it takes the generator's first `synthetic_size` problems (train
    and val), and the generator is sequential, so the problems after them are new."""
    from data_modules import synthetic

    capacity = sum(synthetic.pair_count(level) for level in set(levels))
    if synthetic_size + num > capacity:
        raise ValueError(f"only {capacity - synthetic_size} unseen problems exist at levels {levels}, asked for {num}")
    problems = synthetic.generate_problems(synthetic_size + num, seed, levels)
    return synthetic.to_task_rows(problems[synthetic_size:])
