"""Generation requests that wait for the engine together run as one batched `generate` call.

OpenAI-style clients (evaluation harnesses, agent environments, chat front ends) send one conversation per request,
many at once. Run one by one on the engine thread, each pays a whole decode loop for a batch of one; merged, the
engine decodes them as one batch, as vLLM's scheduler does.

Only requests with equal sampling parameters and no seed are merged (a seeded request keeps its own random stream, so
its samples stay reproducible). Merging never reorders a request around other engine work: any other job submitted to
the engine thread (a weight update, a scoring pass) closes the open batch, so a request that arrives after it starts a
new batch that runs after it.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from rcl.engines import Completion, SamplingParams

Generate = Callable[[Sequence[Sequence[int]], SamplingParams], list[list[Completion]]]


@dataclass
class _Batch:
    params: SamplingParams
    max_prompts: int
    prompts: list[Sequence[int]] = field(default_factory=list)
    waiting: list[tuple[int, int, asyncio.Future]] = field(default_factory=list)
    """(first prompt, prompt count, future) of each request in the batch."""
    sealed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, prompts: Sequence[Sequence[int]], params: SamplingParams, future: asyncio.Future) -> bool:
        """Join the batch; False when it is running already, has other parameters, or would grow past its cap."""
        with self.lock:
            if self.sealed or params != self.params or len(self.prompts) + len(prompts) > self.max_prompts:
                return False
            self.waiting.append((len(self.prompts), len(prompts), future))
            self.prompts.extend(prompts)
            return True

    def seal(self) -> tuple[list[Sequence[int]], list[tuple[int, int, asyncio.Future]]]:
        with self.lock:
            self.sealed = True
            return list(self.prompts), list(self.waiting)


class RequestBatcher:
    """`await batcher.generate(prompts, params)` answers as `generate(prompts, params)` would, merging the requests
    that are waiting for the engine thread `worker` into one call of at most `max_prompts` prompts."""

    def __init__(self, worker: Executor, generate: Generate, max_prompts: int):
        self.worker = worker
        self._generate = generate
        self.max_prompts = max_prompts
        self._open: list[_Batch] = []
        """Batches queued since the last `close()`; a request joins the first that takes it."""
        self.calls = 0
        """Engine calls made so far (one per batch)."""

    async def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if params.seed is None:
            self._open = [batch for batch in self._open if not batch.sealed]
            if any(batch.add(prompts, params, future) for batch in self._open):
                return await future
        batch = _Batch(params, max(self.max_prompts, len(prompts)))
        batch.add(prompts, params, future)
        if params.seed is None:
            self._open.append(batch)
        self.worker.submit(self._run, batch, loop)
        return await future

    def close(self) -> None:
        """Requests from now on start a new batch (called before any other job goes to the engine thread)."""
        self._open = []

    def _run(self, batch: _Batch, loop: asyncio.AbstractEventLoop) -> None:
        prompts, waiting = batch.seal()
        self.calls += 1
        try:
            groups = self._generate(prompts, batch.params)
        except BaseException as exc:  # every request of the batch gets the engine's error
            for _, _, future in waiting:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            return
        for start, count, future in waiting:
            loop.call_soon_threadsafe(_settle, future, groups[start : start + count], None)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (its client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
