"""Asynchronous rollouts with bounded staleness (`grpo.max_off_policy_steps: N`).

With N >= 1 a generation worker (one background thread that talks to the servers, or to its own copy of the policy
in process) produces the rollouts of the next N steps while the trainer trains the current one. The schedule is
deterministic, so a run is reproducible and resumes exactly:

- rollout k is submitted right after the weights of step k - N have been pushed (at the start, the rollouts of the
  first N steps use the starting weights), so it is sampled with exactly those weights: staleness N once the
  pipeline is full (fewer for the first N steps, up to N + sync_every_n_steps - 1 with less frequent pushes);
- a push first waits for every submitted rollout to finish (`drain`), so no rollout ever samples from weights that
  change under it, and the same happens before an evaluation or a checkpoint;
- a checkpoint stores the rollouts already generated for later steps (with their prompts and versions), so a
  resumed run trains on the very rollouts the uninterrupted run would have.

Every completion records the version (the optimizer step whose weights sampled it); the loop logs
`staleness/mean`, `staleness/max`, `time/trainer_wait` (trainer idle, waiting for a rollout), `time/server_wait`
(worker idle, waiting for weights) and `time/push_wait` (a push waiting for rollouts in flight).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import torch

from rcl.engines import Completion, HFEngine, SamplingParams
from rcl.rl.rollout import Rollout
from rcl.serving.backends import HFBackend
from rcl.serving.weights import NamedTensor, bucketize


class VersionedEngine:
    """The policy's engine, tagging every completion with the weights version it was sampled with.

    A pushable engine (servers, the local worker) holds the weights of its last push (`weights_pushed(step)`, called
    by the weight-sync callback on every process); a live in-process engine holds the trainer's current step.
    `before_weights_push` (also called on every process) waits for the rollouts in flight. Everything else is the
    wrapped engine's.
    """

    def __init__(self, engine: Any, current_step: Callable[[], int]):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._current_step = current_step
        self.pushable = callable(getattr(engine, "update_weights", None))
        self.version: int | None = None
        self.before_push: Callable[[], float] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["engine"], name)

    def weights_version(self) -> int:
        if not self.pushable:
            return self._current_step()
        if self.version is None:
            raise RuntimeError("the policy's servers have not received the trainer's weights yet")
        return self.version

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        version = self.weights_version()
        groups = self.engine.generate(prompts, params)
        for group in groups:
            for completion in group:
                completion.weights_version = version
        return groups

    def before_weights_push(self) -> float:
        return self.before_push() if self.before_push is not None else 0.0

    def weights_pushed(self, step: int) -> None:
        self.version = step


class LocalWorker(HFBackend):
    """The in-process generation worker of an async run: its own copy of the policy, updated by the same bucketed
    push a server gets (`update_weights`), so generation can run while the trainer changes the live weights. Every
    training process has its own (`per_process`): each pushes to, and checks, its own copy."""

    per_process = True

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_batch_size: int = 256):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.engine = HFEngine(self.model, tokenizer, max_batch_size=max_batch_size)
        self._lock = threading.Lock()
        self._group = None
        self._written = None

    def update_weights(self, named_tensors: Iterable[NamedTensor], bucket_bytes: int = 64 << 20) -> dict:
        start = time.perf_counter()
        buckets = list(bucketize(((n, t.detach().clone()) for n, t in named_tensors), bucket_bytes))
        for i, bucket in enumerate(buckets):
            self.load_weights(bucket, first=i == 0, last=i == len(buckets) - 1)
        return {"bytes": sum(t.numel() * t.element_size() for b in buckets for _, t in b), "buckets": len(buckets),
                "seconds": time.perf_counter() - start}

    def weights_checksums(self) -> list[str]:
        return [self.checksum()]


class RolloutPipeline:
    """Rollouts generated ahead on one worker thread; see the module docstring for the schedule.

    `draw(k)` runs on the trainer's thread at submission (it draws rollout k's prompts and calls the batch-start
    callbacks) and returns `(rows, seed)`; `generate(rows, seed)` runs on the worker.
    """

    def __init__(self, generate: Callable[[list[dict], int], Rollout], draw: Callable[[int], tuple[list[dict], int]],
                 max_off_policy_steps: int, max_steps: int, first_step: int, ready: dict[int, Rollout] | None = None):
        if max_off_policy_steps < 1:
            raise ValueError(f"max_off_policy_steps must be >= 1 for a pipeline, got {max_off_policy_steps}")
        self._generate, self._draw = generate, draw
        self.ahead, self.max_steps = max_off_policy_steps, max_steps
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcl-rollouts")
        self._futures: dict[int, Future] = {}
        for k, rollout in (ready or {}).items():
            done: Future = Future()
            done.set_result(rollout)
            self._futures[k] = done
        self.next_to_submit = max([first_step, *[k + 1 for k in self._futures]])
        self._lock = threading.Lock()
        self._busy = 0
        self._idle_since: float | None = time.perf_counter()
        self.timings = {"trainer_wait": 0.0, "server_wait": 0.0, "push_wait": 0.0}

    def fill(self, step: int) -> None:
        """Submit every rollout up to step + N (the trainer is about to train `step`, its weights just pushed)."""
        while self.next_to_submit <= step + self.ahead and self.next_to_submit < self.max_steps:
            k = self.next_to_submit
            rows, seed = self._draw(k)
            with self._lock:
                self._busy += 1
                if self._idle_since is not None:
                    self.timings["server_wait"] += time.perf_counter() - self._idle_since
                    self._idle_since = None
            self._futures[k] = self._executor.submit(self._run, rows, seed)
            self.next_to_submit += 1

    def _run(self, rows: list[dict], seed: int) -> Rollout:
        try:
            return self._generate(rows, seed)
        finally:
            with self._lock:
                self._busy -= 1
                if self._busy == 0:
                    self._idle_since = time.perf_counter()

    def take(self, step: int) -> Rollout:
        """Rollout `step`, waiting for the worker if it is not ready (the wait is `time/trainer_wait`)."""
        self.fill(step)
        future = self._futures.pop(step)
        start = time.perf_counter()
        rollout = future.result()
        self.timings["trainer_wait"] += time.perf_counter() - start
        return rollout

    def drain(self) -> float:
        """Wait for every submitted rollout (before a push, an evaluation or a checkpoint); returns the wait."""
        start = time.perf_counter()
        for future in list(self._futures.values()):
            future.result()
        waited = time.perf_counter() - start
        self.timings["push_wait"] += waited
        return waited

    def pop_timings(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.timings.items()}
        self.timings = dict.fromkeys(self.timings, 0.0)
        return out

    def state_dict(self) -> dict:
        """The rollouts generated for later steps (waits for those in flight)."""
        self.drain()
        return {"rollouts": [[k, self._futures[k].result().state_dict()] for k in sorted(self._futures)]}

    @staticmethod
    def ready_from_state(state: dict | None) -> dict[int, Rollout]:
        return {int(k): Rollout.from_state(r) for k, r in (state or {}).get("rollouts", [])}

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def staleness(rollout: Rollout, step: int) -> torch.Tensor:
    """Per completion: how many optimizer steps older than the trainer's the sampling weights were."""
    versions = [c.weights_version for c in rollout.completions]
    if any(v is None for v in versions):
        return torch.zeros(len(versions))
    return torch.tensor([float(step - v) for v in versions])
