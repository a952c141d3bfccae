"""Multi-turn rollouts: the conversation's ids and loss mask are exact token by token, per-step rewards land on each
turn's last token, returns aggregate by last or sum, a crashing or hanging environment fails only its episode, and
the toy environments' scripted optimal policies beat their random ones, deterministically by seed."""

import gc
import threading
import time

import pytest
import torch

import rcl.tasks.envs  # noqa: F401  (registers the toy environments)
from rcl.engines import Completion
from rcl.prompts import PromptTemplates
from rcl.rl.args import GenerationArgs, GRPOArgs
from rcl.rl.multiturn import EnvPool, MultiTurnRunner, episode_return
from rcl.tasks import Environment, StepResult, get_task
from rcl.tasks.envs.base import optimal_policy, random_policy, run_episode

TEMPLATES = PromptTemplates(student_system=None, student_baseline="{question}")


class Scripted(Environment):
    """Says `obs-k` after the k-th action; rewards 0.5, 0.25, then 1.0 at the third (final) step."""

    max_turns = 3
    rewards = (0.5, 0.25, 1.0)

    def reset(self, row, seed=0):
        self.k = 0
        return "start here"

    def step(self, action):
        self.k += 1
        done = self.k == 3
        return StepResult("" if done else f"obs-{self.k}", self.rewards[self.k - 1], done, {"success": done})


class FakeEngine:
    """Answers every prompt with the next scripted action's token ids (plus the end-of-turn id)."""

    def __init__(self, tokenizer, actions):
        self.tokenizer, self.actions, self.turn, self.prompts = tokenizer, actions, 0, []

    def generate(self, prompts, params):
        self.prompts.append([list(p) for p in prompts])
        ids = self.tokenizer(self.actions[self.turn], add_special_tokens=False)["input_ids"]
        ids = ids + [self.tokenizer.eos_token_id]
        self.turn += 1
        return [[Completion(list(ids), [-0.5] * len(ids), "stop", self.actions[self.turn - 1])] for _ in prompts]


def settings(g=1):
    from rcl.rl.loop import rollout_settings

    return rollout_settings(GRPOArgs(protocol="direct", num_generations=g), GenerationArgs(max_completion_length=8))


@pytest.fixture()
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")


def test_the_action_mask_is_exact_token_by_token(tok):
    actions = ["go left", "pick it", "done now"]
    engine = FakeEngine(tok, actions)
    runner = MultiTurnRunner(engine, Scripted, TEMPLATES, aggregate="sum")
    rollout = runner.run([{"question": "q"}], seed=0, settings=settings())
    ids, mask = rollout.prompt_ids[0] + rollout.completions[0].token_ids, rollout.action_masks[0]
    # the whole sequence is the chat template's rendering of the conversation, to the token
    messages = [{"role": "user", "content": "start here"}]
    for k, action in enumerate(actions):
        messages.append({"role": "assistant", "content": action})
        if k < 2:
            messages.append({"role": "user", "content": f"obs-{k + 1}"})
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ids) + "\n" == rendered
    # 1 exactly on the sampled ids of each turn (the action and its end-of-turn token), 0 on everything else
    expected = []
    completion = rollout.completions[0].token_ids
    for k, action in enumerate(actions):
        sampled = tok(action, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        expected += [1] * len(sampled)
        if k < 2:
            env = tok("\n" + f"<|im_start|>user\nobs-{k + 1}<|im_end|>\n<|im_start|>assistant\n",
                      add_special_tokens=False)["input_ids"]
            expected += [0] * len(env)
    assert mask == expected and len(mask) == len(completion)
    trained = [t for t, m in zip(completion, mask) if m]
    assert tok.decode(trained) == "<|im_end|>".join(actions) + "<|im_end|>"
    # each turn generated from exactly the ids so far, and its reward sits on its last sampled token
    assert [p[0] for p in engine.prompts] == [ids[: len(rollout.prompt_ids[0]) + n] for n in
                                               [0, mask.index(0, 0) + expected[mask.index(0):].index(1),
                                                len(expected) - len(tok("done now", add_special_tokens=False)
                                                                    ["input_ids"]) - 1]]
    ends = [i for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
    assert [p for p, _ in rollout.turn_rewards[0]] == ends
    assert [r for _, r in rollout.turn_rewards[0]] == [0.5, 0.25, 1.0]
    assert float(rollout.rewards[0]) == pytest.approx(1.75)
    assert rollout.interactions[0].p_with == 1.0


def test_the_loop_mask_is_the_action_mask(tok):
    from rcl.rl.loop import _mask, _pack

    rollout = MultiTurnRunner(FakeEngine(tok, ["a", "b", "c"]), Scripted, TEMPLATES).run([{"question": "q"}], 0,
                                                                                         settings())
    _, _, comp = _pack(rollout, [0], 0, "cpu")
    mask = _mask(rollout, [0], comp, [tok.eos_token_id], GRPOArgs())
    assert mask[0].tolist() == [float(m) for m in rollout.action_masks[0]]



def test_dapo_normalises_by_the_trained_action_tokens_not_the_environment_text(tok, tiny_model_dir):
    """On-policy, the dapo loss of one row is -A x (trained tokens / normaliser): exactly -A when the normaliser counts
    the policy's tokens only (environment text, masked out of the loss, would shrink it to -A x 6 / 30 or so)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from rcl.optim import OptimizerArgs
    from rcl.rl import loop

    rollout = MultiTurnRunner(FakeEngine(tok, ["a", "b", "c"]), Scripted, TEMPLATES).run([{"question": "q"}], 0,
                                                                                         settings())
    assert loop.trained_tokens(rollout, GRPOArgs()) == sum(rollout.action_masks[0]) == 6  # 3 x (action, end)
    assert len(rollout.completions[0].token_ids) > 12  # the environment's two turns sit in between
    rollout.completions[0] = Completion(rollout.completions[0].token_ids, rollout.completions[0].logprobs, "length",
                                        "")
    assert loop.trained_tokens(rollout, GRPOArgs(mask_truncated_completions=True)) == 0
    rollout.completions[0] = Completion(rollout.completions[0].token_ids, rollout.completions[0].logprobs, "stop", "")
    rollout.advantages = torch.tensor([1.0])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    fabric = SimpleNamespace(world_size=1, global_rank=0, device=torch.device("cpu"), strategy=None,
                             backward=lambda loss: loss.backward(), all_reduce=lambda t, reduce_op=None: t,
                             no_backward_sync=lambda *a, **k: nullcontext(), call=lambda *a, **k: None)
    state = {"model": model, "optimizer": optimizer, "ref_model": None,
             "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)}
    stats = loop.train_step(fabric, state, rollout, GRPOArgs(loss_type="dapo", beta=0.0), GenerationArgs(),
                            OptimizerArgs(max_grad_norm=0.0), [tok.eos_token_id], None)
    assert stats["loss"] == pytest.approx(-1.0, abs=1e-6)

def test_returns_aggregate_by_last_or_sum():
    assert episode_return([0.5, 0.25, 1.0], "sum") == 1.75
    assert episode_return([0.5, 0.25, 1.0], "last") == 1.0
    assert episode_return([], "sum") == 0.0
    with pytest.raises(ValueError):
        episode_return([1.0], "mean")


class Hangs(Scripted):
    def step(self, action):
        time.sleep(3.0)
        return super().step(action)


class Crashes(Scripted):
    def step(self, action):
        raise RuntimeError("boom")


@pytest.mark.parametrize("bad, message", [(Hangs, "timed out"), (Crashes, "RuntimeError: boom")])
def test_a_hanging_or_crashing_environment_fails_its_episode_not_the_run(tok, bad, message):
    made = iter([Scripted(), bad(), Scripted(), Scripted()])
    runner = MultiTurnRunner(FakeEngine(tok, ["x", "y", "z"]), lambda: next(made), TEMPLATES, timeout_s=0.5)
    start = time.monotonic()
    rollout = runner.run([{"question": "a"}, {"question": "b"}], seed=0, settings=settings(g=2))
    assert time.monotonic() - start < 2.5
    assert rollout.rewards.tolist() == [1.75, 0.0, 1.75, 1.75]
    assert rollout.verifier["verifier/errors"] == 1.0
    assert rollout.verifier["verifier/timeouts"] == float(bad is Hangs)
    assert len(rollout.completions[1].token_ids) == sum(rollout.action_masks[1]) > 0  # its one turn, no env text
    assert runner.failed == 1


def test_the_pool_replaces_hung_workers():
    pool = EnvPool(workers=1, timeout_s=0.3)
    first = pool.map([lambda: time.sleep(2.0)])
    assert "timed out" in str(first[0])
    assert pool.map([lambda: 41 + 1]) == [42]  # not queued behind the hung call


def test_a_closed_or_dropped_pool_stops_its_workers():
    earlier = set(threading.enumerate())  # an earlier test's abandoned worker may end at any time: not counted

    def workers():
        return sum(t.name.startswith("rcl-env") and t.is_alive() for t in set(threading.enumerate()) - earlier)

    def settles_at(count):
        deadline = time.monotonic() + 10
        while workers() != count and time.monotonic() < deadline:
            time.sleep(0.02)
        return workers() == count

    before = workers()
    closed, dropped = EnvPool(workers=2), EnvPool(workers=3)
    assert closed.map([lambda: 1]) == [1] and dropped.map([lambda: 2, lambda: 3]) == [2, 3]
    assert workers() == before + 5
    closed.close()
    assert settles_at(before + 3)
    del dropped  # never closed: its finalizer stops the workers, which hold only the queue
    gc.collect()
    assert settles_at(before)


@pytest.mark.parametrize("name", ["grid", "craft", "shop"])
def test_toy_environments_optimal_beats_random_and_is_deterministic(name):
    env = get_task(name)
    rows = env.rows("train", 40)
    optimal = [run_episode(env, optimal_policy, r) for r in rows]
    rand = [run_episode(env, random_policy(i), r) for i, r in enumerate(rows)]
    assert all(o.success for o in optimal)
    assert all(o.rewards[-1] == env.completion_reward for o in optimal)
    opt_mean = sum(o.total for o in optimal) / len(rows)
    rand_mean = sum(o.total for o in rand) / len(rows)
    assert opt_mean > rand_mean + 0.5
    assert sum(o.success for o in rand) < len(rows) / 2
    again = [run_episode(env, random_policy(i), r) for i, r in enumerate(rows)]
    assert [o.rewards for o in again] == [o.rewards for o in rand]
    observations = {env.reset(r) for r in rows}
    assert len(observations) >= 6  # seeds give different episodes (craft has six goals)


def test_grid_shaping_is_a_step_reward_per_approach_plus_completion():
    env = get_task("grid")
    row = env.rows("train", 1)[0]
    result = run_episode(env, optimal_policy, row)
    env.reset(row)
    start_distance = env.distance()
    # the optimal path approaches the ball to distance 1, each approach paying 0.1, then picks it up for 1.0
    assert result.total == pytest.approx(0.1 * (start_distance - 1) + 1.0)


def test_grid_egocentric_view_states_the_bearing_and_is_enough_for_the_expert():
    """Every state of a 4x4 grid: the egocentric observation is the ball's position in the agent's frame, and states
    that look the same get the same optimal action, so a policy can imitate the expert from the observation alone;
    the absolute view's observation differs between such states."""
    from itertools import product

    env = get_task("grid", size=4, terse=True, egocentric=True)
    env.reset(env.rows("train", 1)[0])
    cells = list(product(range(4), range(4)))
    action_of = {}
    for agent, ball, facing in product(cells, cells, ("north", "east", "south", "west")):
        if agent == ball:
            continue
        env.agent, env.ball, env.facing = agent, ball, facing
        action_of.setdefault(env.describe(), set()).add(env.optimal_action())
    assert all(len(actions) == 1 for actions in action_of.values())
    assert action_of["ball 1 ahead"] == {"pickup"} and action_of["ball 2 ahead"] == {"forward"}
    assert action_of["ball 1 ahead, 2 left"] == {"forward"} and action_of["ball 3 behind"] == {"right"}
    assert action_of["ball 1 left"] == {"left"} and action_of["ball 2 behind, 1 right"] == {"right"}
    env.agent, env.ball, env.facing = (0, 0), (2, 3), "east"  # ball 2 east, 3 south: ahead 2, right 3
    assert env.describe() == "ball 2 ahead, 3 right"
    env.facing = "north"
    assert env.describe() == "ball 3 behind, 2 right"
    verbose = get_task("grid", size=4, egocentric=True)
    verbose.reset(verbose.rows("train", 1)[0])
    verbose.agent, verbose.ball, verbose.facing = (0, 0), (2, 3), "west"
    assert verbose.describe() == "The ball is 2 behind and 3 left of you."
    rows = env.rows("train", 30)
    assert all(run_episode(get_task("grid", size=4, egocentric=True), optimal_policy, r).success for r in rows)


def test_grid_expert_takes_a_shortest_path_from_every_state():
    """The scripted expert's episode length equals a breadth-first search's fewest actions to pick up the ball."""
    from collections import deque
    from itertools import product

    env = get_task("grid", size=4, max_turns=50)
    env.reset(env.rows("train", 1)[0])

    def fewest_actions(agent, ball, facing):
        seen, queue = {(agent, facing)}, deque([(agent, facing, 0)])
        while queue:
            agent, facing, n = queue.popleft()
            env.agent, env.ball, env.facing, env.done = agent, ball, facing, False
            if env.front() == ball:
                return n + 1
            for action in ("forward", "left", "right"):
                env.agent, env.facing = agent, facing
                env.apply(action)
                if (env.agent, env.facing) not in seen:
                    seen.add((env.agent, env.facing))
                    queue.append((env.agent, env.facing, n + 1))

    cells = list(product(range(4), range(4)))
    for agent, ball, facing in product(cells, cells, ("north", "east", "south", "west")):
        if agent == ball:
            continue
        shortest = fewest_actions(agent, ball, facing)
        env.agent, env.ball, env.facing, env.done, env.turns = agent, ball, facing, False, 0
        steps = 0
        while not env.done:
            env.step(env.optimal_action())
            steps += 1
        assert steps == shortest, (agent, ball, facing)


def test_craft_and_shop_shaping():
    craft = get_task("craft")
    row = next(r for r in craft.rows("train", 50) if (craft.reset(r), craft.goal)[1] == "torch")
    result = run_episode(craft, optimal_policy, row)
    # get log, craft planks, craft stick, get coal (0.15 each), craft torch (1.0)
    assert result.actions == ["get log", "craft planks", "craft stick", "get coal", "craft torch"]
    assert result.rewards == pytest.approx([0.15, 0.15, 0.15, 0.15, 1.0])
    shop = get_task("shop")
    result = run_episode(shop, optimal_policy, shop.rows("train", 1)[0])
    assert result.rewards == pytest.approx([0.1, 0.3, 1.0])  # the guide's WebShop 0.1 / 0.3 / 1.0


def test_the_example_user_environment_registers_and_plays():
    from rcl.tasks import TaskArgs

    env = TaskArgs(name="countdown", module="experiments.my_environment").build()
    rows = env.rows("train", 10)
    optimal = [run_episode(env, optimal_policy, r) for r in rows]
    assert all(o.success for o in optimal)
    assert all(o.rewards == [0.1] * (len(o.rewards) - 1) + [1.0] for o in optimal)
    assert sum(run_episode(env, random_policy(i), r).success for i, r in enumerate(rows)) < 10


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_the_rl_loop_trains_on_a_multi_turn_environment(models_dir, tmp_path, algorithm):
    import json
    from pathlib import Path

    from rcl.rl.loop import cli_main

    out = tmp_path / algorithm
    recipe = str(Path(__file__).resolve().parents[1] / "lightning_configs" / "quickstart_grid.yaml")
    extra = ["--grpo.num_generations", "2", "--grpo.prompts_per_step", "2"] if algorithm == "grpo" else \
        ["--grpo.prompts_per_step", "2"]
    cli_main("fit", ["--config", recipe, "--teacher.model_name_or_path", "tiny-1m", "--algorithm", algorithm,
                     "--trainer.out_dir", str(out),
                     "--trainer.loggers", "[csv]", "--trainer.max_steps", "2", "--eval.num_prompts", "2",
                     "--trainer.export_hf", "false", *extra])
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward" in r]
    assert len(train) == 2 and all("rewards/env_return/mean" in r for r in train)
    assert ("value/loss" in train[0]) == (algorithm == "ppo")
    assert rows[-1]["step"] == 2 and "eval/accuracy" in rows[-1]


HANGING_ENV = '''
import threading

from rcl.tasks.base import register_task
from rcl.tasks.envs.grid import GridEnv


@register_task("hanging_grid")
class HangingGrid(GridEnv):
    """The grid, except that the second step of every episode never returns."""

    def step(self, action):
        if self.turns == 1:
            threading.Event().wait()
        return super().step(action)
'''


def test_a_run_whose_environment_hangs_forever_finishes_and_exits(models_dir, tmp_path, repo_env):
    """The hung calls time out and fail their episodes; their abandoned worker threads must not keep the finished
    process alive (a ThreadPoolExecutor's threads are joined at exit, which here would wait forever)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "hanging_env.py").write_text(HANGING_ENV)
    out = tmp_path / "run"
    env = dict(repo_env, RCL_MODELS_DIR=str(models_dir), OMP_NUM_THREADS="1",
               PYTHONPATH=f"{tmp_path}{__import__('os').pathsep}{repo_env['PYTHONPATH']}")
    args = ["--config", str(root / "lightning_configs" / "quickstart_grid.yaml"), "--teacher.model_name_or_path", "tiny-1m",
            "--task.module", "hanging_env",
            "--task.name", "hanging_grid", "--multiturn.timeout_s", "0.5", "--trainer.max_steps", "1",
            "--grpo.prompts_per_step", "2", "--eval.num_prompts", "2", "--eval.at_start", "false",
            "--trainer.export_hf", "false", "--trainer.loggers", "[csv]", "--trainer.out_dir", str(out)]
    proc = subprocess.run([sys.executable, "-m", "rcl", "fit", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward" in r]
    assert len(train) == 1 and train[0]["verifier/timeouts"] == 2.0  # both episodes hung at their second step


# ----- SFT data from an environment's scripted policy -----

GRID = {"size": 4, "terse": True, "char_actions": True, "egocentric": True, "max_turns": 6}


def grid_rows(n=12):
    return get_task("grid", **GRID).rows("train", n)


def test_char_action_texts_are_one_token_and_read_back_as_their_action(tok):
    env = get_task("grid", **GRID)
    texts = {a: env.action_text(a) for a in env.actions()}
    assert len(set(texts.values())) == 5
    for action, text in texts.items():
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == 1
    # the optimal policy written as characters plays exactly the episodes of the optimal policy written as names
    for row in grid_rows():
        named = run_episode(get_task("grid", **GRID), optimal_policy, row)
        written = run_episode(get_task("grid", **GRID), lambda e, o: e.action_text(e.optimal_action()), row)
        assert written.rewards == named.rewards and written.actions == [texts[a] for a in named.actions]
    assert get_task("grid", size=4).action_text("pickup") == "pickup"  # named actions stay named


def test_scripted_sft_rows_are_the_rollouts_ids_with_the_action_mask_as_labels(tok):
    """For the same actions, the SFT example is token for token the sequence MultiTurnRunner builds, and its labels
    are the rollout's trained tokens (the actions and their end-of-turn ids) and nothing else."""
    from rcl.rl.multiturn import ConversationIds, scripted_example
    from rcl.tasks.envs.base import scripted_policy

    templates = PromptTemplates(student_system=None, student_baseline="{question}")
    render = ConversationIds(tok, templates)
    checked_turns = 0
    for row in grid_rows(6):
        ids, labels, actions = scripted_example(get_task("grid", **GRID), render, row, scripted_policy(0.3, row["seed"]))
        runner = MultiTurnRunner(FakeEngine(tok, actions), lambda: get_task("grid", **GRID), templates)
        rollout = runner.run([row], seed=0, settings=settings())
        assert rollout.prompt_ids[0] + rollout.completions[0].token_ids == ids
        mask = [0] * len(rollout.prompt_ids[0]) + rollout.action_masks[0]
        assert [t if m else -100 for t, m in zip(ids, mask)] == labels
        assert rollout.completions[0].text.split("\n") == actions
        checked_turns += len(actions)
    assert checked_turns > 12  # multi-turn episodes, not only one-step ones


def test_epsilon_zero_reproduces_the_scripted_optimal_policy_and_epsilon_adds_seeded_mistakes(tok):
    from rcl.rl.multiturn import ConversationIds, scripted_example
    from rcl.tasks.envs.base import scripted_policy

    render = ConversationIds(tok, TEMPLATES)
    env = get_task("grid", **GRID)
    differs = 0
    for row in grid_rows(20):
        optimal = run_episode(get_task("grid", **GRID), optimal_policy, row)
        ids, labels, actions = scripted_example(env, render, row, scripted_policy(0.0, seed=row["seed"]))
        assert actions == [env.action_text(a) for a in optimal.actions]
        trained = tok.decode([t for t in labels if t != -100])
        assert trained == "".join(a + tok.eos_token for a in actions)
        noisy = scripted_example(env, render, row, scripted_policy(0.5, seed=row["seed"]))
        assert noisy == scripted_example(env, render, row, scripted_policy(0.5, seed=row["seed"]))  # seeded
        differs += noisy[2] != actions
    assert differs >= 5
    with pytest.raises(ValueError, match="epsilon"):
        scripted_policy(1.5)


def test_the_data_module_plays_any_registered_scripted_environment(tiny_model_dir):
    """`dataset: environment` works for a user's environment in experiments/ as it is (countdown), labels only the
    actions, and refuses an environment without a scripted policy."""
    from data_modules import TeacherStudentDataModule
    from data_modules.sources import DataError
    from rcl.tasks.base import TaskArgs

    def module(name, module_name, epsilon=0.0, kwargs=None):
        return TeacherStudentDataModule(dataset="environment", environment=TaskArgs(name, kwargs or {}, module_name),
                                        scripted_epsilon=epsilon, synthetic_size=10, val_size=2,
                                        tokenizer_name_or_path=str(tiny_model_dir), templates=TEMPLATES)

    dm = module("countdown", "experiments.my_environment")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (8, 2)
    for example in dm.train_set:
        text = dm.tokenizer.decode(example["input_ids"])
        start = int(text.split("Count down from ")[1].split(" ")[0])
        trained = dm.tokenizer.decode([t for t in example["labels"] if t != -100])
        assert trained == "".join(f"{n}{dm.tokenizer.eos_token}" for n in range(start - 1, -1, -1))
    with pytest.raises(DataError, match="no scripted policy"):
        module("bandit", "rcl.tasks.envs", kwargs={}).setup()
    with pytest.raises(DataError, match="needs data.init_args.environment"):
        TeacherStudentDataModule(dataset="environment", tokenizer_name_or_path=str(tiny_model_dir)).setup()


def test_env_eval_plays_models_and_scripted_experts_on_the_same_held_out_episodes(tiny_model_dir, tmp_path):
    """experiments/env_eval.py: greedy or K samples per episode, paired by episode; scripted experts on the same
    episodes (epsilon 0 is the optimal policy), and the same call gives the same numbers."""
    import json
    from pathlib import Path

    from experiments.env_eval import main
    from rcl.tasks import TaskArgs

    config = str(Path(__file__).resolve().parents[1] / "lightning_configs" / "quickstart_grid.yaml")
    args = ["--config", config, "--models", tiny_model_dir, "--episodes", "8", "--scripted", "0", "1"]
    sampled = main([*args, "--temperature", "1", "--samples", "2", "--json", str(tmp_path / "sampled.json")])
    assert json.loads((tmp_path / "sampled.json").read_text()) == sampled
    assert list(sampled) == [tiny_model_dir, "scripted expert, epsilon 0.0", "scripted expert, epsilon 1.0"]
    for values in sampled.values():
        assert len(values["return"]) == 8 and all(s in (0.0, 0.5, 1.0) for s in values["success"])
    optimal, random_ = sampled["scripted expert, epsilon 0.0"], sampled["scripted expert, epsilon 1.0"]
    env = TaskArgs(**yaml_task(config)).build()
    for row, ret in zip(env.rows("test", 8), optimal["return"]):
        assert ret == pytest.approx(run_episode(env, optimal_policy, row).total)
    assert sum(optimal["return"]) > sum(random_["return"])
    assert main([*args, "--temperature", "1", "--samples", "2"]) == sampled
    greedy = main(["--config", config, "--models", tiny_model_dir, tiny_model_dir, "--episodes", "8",
                   "--pool", "both", "0,1"])
    assert all(s in (0.0, 1.0) for s in greedy[tiny_model_dir]["success"])
    assert greedy["both"] == greedy[tiny_model_dir]  # the per-episode mean of two identical runs
    with pytest.raises(SystemExit):
        main([*args, "--samples", "2"])  # greedy plays would repeat exactly


def yaml_task(config: str) -> dict:
    import yaml

    with open(config) as f:
        return yaml.safe_load(f)["task"]
