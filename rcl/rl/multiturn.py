"""Multi-turn rollouts: the policy acts turn by turn on the conversation so far, through the same engines.

Each episode is one token sequence: the first observation rendered as the prompt, then for every turn the policy's
sampled tokens followed by the environment's answer rendered as the next user turn of the chat template. Generation
always continues from exactly those ids, and the loss trains exactly the sampled tokens (`action_masks`: 1 on the
policy's tokens, 0 on environment text). Per-step rewards sit on each turn's last token (`turn_rewards`, for PPO's
GAE); the episode's return, aggregated by `last` or `sum`, is the sequence reward (GRPO's group advantages).

Environments run in a bounded pool of daemon threads with a per-call timeout: an environment that raises or hangs fails
its own episode (return 0, `failed` counted), never the run. A hung call cannot be killed from Python, so its worker
is abandoned and replaced; being a daemon thread, it never delays the process's exit.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

import torch

from data_modules.sft_examples import IGNORE_INDEX
from rcl.engines import Completion
from rcl.grpo import group_advantages
from rcl.rl.rollout import Interaction, Rollout
from rcl.tasks.base import Environment

Aggregate = Literal["last", "sum"]


@dataclass
class MultiTurnArgs:
    """Episodes of multi-turn environments (a task with max_turns > 1, e.g. grid, craft, shop)."""

    reward_aggregate: Aggregate = "sum"
    """The episode return from per-step rewards: sum, or the last step's (GRPO's sequence reward)."""
    workers: int = 8
    """Environment calls running at once."""
    timeout_s: float = 30.0
    """Longest environment call (reset or step); one past it fails its episode."""
    max_total_tokens: int = 1024
    """An episode whose conversation reaches this many tokens ends (truncated)."""


class EnvironmentFailure(RuntimeError):
    """An environment call raised or timed out; its episode ends as failed."""


class EnvPool:
    """Runs environment calls on `workers` daemon threads, each call bounded by `timeout_s` from when it starts.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one environment hung past its timeout
    would keep a finished run from exiting until the call returned. A worker whose call times out is abandoned (it
    exits once the call returns, if ever) and a fresh one takes its place, so later calls still get `workers`
    threads and never queue behind a hung one.
    """

    def __init__(self, workers: int = 8, timeout_s: float = 30.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.timeout_s = workers, timeout_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._live = [0]  # shared with the finalizer, which must not hold the pool
        self._spawned = 0
        # the workers hold the queue, not the pool, so a pool dropped without close() still stops its idle workers
        self._stop = weakref.finalize(self, _stop_workers, self._queue, self._live)
        for _ in range(workers):
            self._spawn()

    def _spawn(self) -> None:
        threading.Thread(target=_work, args=(self._queue,), name=f"rcl-env-{self._spawned}", daemon=True).start()
        self._live[0] += 1
        self._spawned += 1

    def map(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """Results in order; a call that raised or ran past the timeout gives an EnvironmentFailure instead."""
        futures = []
        for call in calls:
            future: Future = Future()
            future.started_at = None
            self._queue.put((call, future))
            futures.append(future)
        return [self._result(future) for future in futures]

    def _result(self, future: Future) -> Any:
        while True:
            started = future.started_at
            # not started yet: every earlier call has returned or been abandoned, so a worker takes it shortly
            wait = self.timeout_s if started is None else started + self.timeout_s - time.monotonic()
            try:
                return future.result(timeout=max(0.0, wait))
            except FutureTimeout:
                if future.done():  # it returned just as the wait ran out
                    continue
                started = future.started_at
                if started is not None and time.monotonic() - started >= self.timeout_s:
                    future.abandoned = True
                    self._live[0] -= 1
                    self._spawn()
                    return EnvironmentFailure(f"environment call timed out after {self.timeout_s:g} s")
            except Exception as exc:  # noqa: BLE001 - any environment error fails only its episode
                return EnvironmentFailure(f"environment raised {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop the idle workers (a hung one is a daemon thread and never holds up exit)."""
        self._stop()


def _work(calls: queue.SimpleQueue) -> None:
    """An EnvPool worker: runs calls until it takes a stop (None), or until map() abandoned its call."""
    while True:
        item = calls.get()
        if item is None:
            return
        call, future = item
        if not future.set_running_or_notify_cancel():
            continue
        future.started_at = time.monotonic()
        try:
            future.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - handed to map(), which fails only this episode
            future.set_exception(exc)
        if getattr(future, "abandoned", False):  # map() gave up on this call and spawned a replacement
            return


def _stop_workers(calls: queue.SimpleQueue, live: list[int]) -> None:
    for _ in range(live[0]):
        calls.put(None)
    live[0] = 0


@dataclass(frozen=True)
class ChatSegments:
    """The chat template's text pieces around turns, found by rendering placeholders once per tokenizer."""

    after_action: str
    """What closes an assistant turn beyond its end-of-turn token (chatml: a newline)."""
    user_prefix: str
    user_suffix: str
    """A user turn is `user_prefix + text + user_suffix`; the suffix opens the next assistant turn."""

    @classmethod
    def of(cls, tokenizer: Any) -> "ChatSegments":
        a, u0, u1 = "\x00A\x00", "\x00U0\x00", "\x00U1\x00"
        render = tokenizer.apply_chat_template
        one = render([{"role": "user", "content": u0}, {"role": "assistant", "content": a}], tokenize=False)
        two = render([{"role": "user", "content": u0}, {"role": "assistant", "content": a},
                      {"role": "user", "content": u1}], tokenize=False, add_generation_prompt=True)
        end_text = tokenizer.decode([tokenizer.eos_token_id])
        closing = one[one.index(a) + len(a):]
        after = closing[len(end_text):] if closing.startswith(end_text) else closing
        rest = two[len(one):]
        prefix, suffix = rest.split(u1)
        return cls(after, prefix, suffix)


class ConversationIds:
    """How an episode's conversation becomes token ids, built once here for the rollout and for scripted SFT data
    (`scripted_example`): the first observation rendered as the prompt (the student baseline template), and after
    each action the environment's answer rendered as the next user turn of the chat template."""

    def __init__(self, tokenizer: Any, templates):
        self.tokenizer, self.templates = tokenizer, templates
        self.segments = ChatSegments.of(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, observation: str) -> list[int]:
        from rcl.prompts import render_prompt, student_messages

        return self.encode(render_prompt(self.tokenizer, student_messages(self.templates, "baseline", observation)))

    def reply(self, action_ids: Sequence[int], observation: str) -> list[int]:
        """The ids after an action's ids: its end-of-turn token unless the action ended with it, then `observation`
        as the next user turn, up to where the next assistant turn begins."""
        eos = self.tokenizer.eos_token_id
        closing = [eos] if not action_ids or action_ids[-1] != eos else []
        return closing + self.encode(self.segments.after_action + self.segments.user_prefix + observation
                                     + self.segments.user_suffix)


@dataclass
class Episode:
    env: Environment
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    """Everything after the prompt: actions and environment turns."""
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turn_rewards: list[tuple[int, float]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    done: bool = False
    success: bool = False
    failed: str = ""
    truncated: bool = False


def episode_return(rewards: Sequence[float], aggregate: Aggregate) -> float:
    if not rewards:
        return 0.0
    if aggregate == "sum":
        return float(sum(rewards))
    if aggregate == "last":
        return float(rewards[-1])
    raise ValueError(f"unknown reward aggregate {aggregate!r}; choose last or sum")


class MultiTurnRunner:
    """`run(rows, seed, settings)` like RolloutRunner, for an Environment with `max_turns` > 1 (or any Environment).

    `env_factory()` builds one fresh environment per episode (environments hold episode state)."""

    def __init__(self, policy_engine, env_factory: Callable[[], Environment], templates, aggregate: Aggregate = "sum",
                 workers: int = 8, timeout_s: float = 30.0, max_total_tokens: int = 2048):
        self.policy = policy_engine
        self.student = None
        self.env_factory = env_factory
        self.templates = templates
        self.aggregate = aggregate
        self.pool = EnvPool(workers, timeout_s)
        self.max_total_tokens = max_total_tokens
        self.render = ConversationIds(policy_engine.tokenizer, templates)
        self.failed = 0

    def run(self, rows: Sequence[dict], seed: int, settings) -> Rollout:
        start = time.perf_counter()
        g = settings.num_generations
        envs = [self.env_factory() for _ in range(len(rows) * g)]
        owners = [i for i in range(len(rows)) for _ in range(g)]
        # the G episodes of a row share its environment seed (a GRPO group compares policies on one instance)
        firsts = self.pool.map([lambda e=e, r=rows[o]: e.reset(r, seed=0) for e, o in zip(envs, owners)])
        episodes = []
        for env, first in zip(envs, firsts):
            if isinstance(first, EnvironmentFailure):
                ep = Episode(env, self.render.prompt("(the environment failed to start)"), done=True, failed=str(first))
            else:
                ep = Episode(env, self.render.prompt(first))
            episodes.append(ep)
        timings = {"generation/policy": 0.0, "environment": 0.0}
        for turn in range(max(getattr(e, "max_turns", 1) for e in envs)):
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            t0 = time.perf_counter()
            params = replace(settings.policy, n=1, seed=seed + 7919 * turn)
            outs = self.policy.generate([ep.prompt_ids + ep.ids for ep in active], params)
            timings["generation/policy"] += time.perf_counter() - t0
            for ep, (c,) in zip(active, outs):
                ep.ids += c.token_ids
                ep.mask += [1] * len(c.token_ids)
                ep.logprobs += list(c.logprobs) if c.logprobs is not None else [0.0] * len(c.token_ids)
                ep.actions.append(c.text)
                if c.finish_reason == "length":
                    ep.truncated = True
            t0 = time.perf_counter()
            results = self.pool.map([lambda ep=ep: ep.env.step(ep.actions[-1]) for ep in active])
            timings["environment"] += time.perf_counter() - t0
            for ep, (c,), res in zip(active, outs, results):
                last = len(ep.ids) - 1
                if isinstance(res, EnvironmentFailure):
                    ep.failed, ep.done = str(res), True
                    ep.turn_rewards.append((last, 0.0))
                    continue
                ep.turn_rewards.append((last, float(res.reward)))
                if res.done or turn + 1 >= ep.env.max_turns:
                    ep.done, ep.success = True, bool(res.info.get("success"))
                    continue
                env_ids = self.render.reply(c.token_ids, res.observation)
                ep.ids += env_ids
                ep.mask += [0] * len(env_ids)
                ep.logprobs += [0.0] * len(env_ids)
                if len(ep.prompt_ids) + len(ep.ids) >= self.max_total_tokens:
                    ep.done, ep.truncated = True, True
        self.failed += sum(bool(ep.failed) for ep in episodes)
        return self._rollout(episodes, rows, owners, settings, timings, time.perf_counter() - start)

    def _rollout(self, episodes, rows, owners, settings, timings, seconds) -> Rollout:
        returns = torch.tensor([episode_return([r for _, r in ep.turn_rewards], self.aggregate) for ep in episodes])
        g = settings.num_generations
        if g > 1:
            advantages, zero_std = group_advantages(returns, g, settings.scale_rewards)
        else:
            advantages, zero_std = torch.zeros_like(returns), torch.zeros(len(returns), dtype=torch.bool)
        completions, interactions = [], []
        for ep, owner in zip(episodes, owners):
            text = "\n".join(ep.actions)
            completions.append(Completion(list(ep.ids), list(ep.logprobs), "length" if ep.truncated else "stop", text))
            interactions.append(Interaction(question=rows[owner].get("question", ""), ground_truth="",
                                            policy_completion=text, p_with=float(ep.success),
                                            completed=float(ep.done and not ep.failed),
                                            reward=float(returns[len(interactions)])))
        timings["reward"] = 0.0
        tokens = {"policy": sum(sum(ep.mask) for ep in episodes)}
        verifier = {"verifier/checks": float(len(episodes)),
                    "verifier/errors": float(sum(bool(ep.failed) for ep in episodes)),
                    "verifier/timeouts": float(sum("timed out" in ep.failed for ep in episodes))}
        return Rollout([ep.prompt_ids for ep in episodes], completions, interactions, returns,
                       {"env_return": returns.clone()}, advantages, zero_std, timings, tokens, g, verifier,
                       action_masks=[list(ep.mask) for ep in episodes],
                       turn_rewards=[list(ep.turn_rewards) for ep in episodes])

    def close(self) -> None:
        self.pool.close()


def copy_factory(env: Environment) -> Callable[[], Environment]:
    """A factory of fresh environments like `env` (the task the recipe built)."""
    return lambda: copy.deepcopy(env)


def scripted_example(env: Environment, render: ConversationIds, row: dict, policy: Callable[[Environment, str], str],
                     seed: int = 0) -> tuple[list[int], list[int], list[str]]:
    """One SFT example from an episode that `policy(env, observation) -> action text` plays: (ids, labels, actions).

    The ids are what MultiTurnRunner builds for a policy that writes these actions, each followed by its end-of-turn
    token; the labels are those action and end-of-turn ids, -100 on the prompt and the environment's turns (the
    rollout's action mask)."""
    observation = env.reset(row, seed)
    ids = render.prompt(observation)
    labels = [IGNORE_INDEX] * len(ids)
    actions: list[str] = []
    for turn in range(env.max_turns):
        actions.append(policy(env, observation))
        action_ids = render.encode(actions[-1]) + [render.tokenizer.eos_token_id]
        ids, labels = ids + action_ids, labels + action_ids
        step = env.step(actions[-1])
        if step.done or turn + 1 >= env.max_turns:
            break
        observation = step.observation
        reply = render.reply(action_ids, observation)
        ids, labels = ids + reply, labels + [IGNORE_INDEX] * len(reply)
    return ids, labels, actions
