"""Concurrent generation requests merged into one engine call (`rcl.serving.batching`), and in the server."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rcl.engines import Completion, SamplingParams
from rcl.serving.batching import RequestBatcher


class RecordingEngine:
    """Answers each prompt with n completions naming it, and records every call (or an update's place among them)."""

    def __init__(self, fail: bool = False):
        self.calls: list = []
        self.fail = fail

    def generate(self, prompts, params):
        self.calls.append([list(p) for p in prompts])
        if self.fail:
            raise RuntimeError("engine exploded")
        return [[Completion(list(p), None, "length", f"{list(p)}/{k}") for k in range(params.n)] for p in prompts]


def held_batcher(max_prompts: int = 100, fail: bool = False):
    """A batcher over a recording engine whose thread is held busy until `gate` is set, so requests queue up."""
    engine, worker, gate = RecordingEngine(fail), ThreadPoolExecutor(max_workers=1), threading.Event()
    worker.submit(gate.wait)
    return engine, RequestBatcher(worker, engine.generate, max_prompts), gate, worker


async def enqueue_then_release(batcher, gate, requests):
    """Start every `(prompts, params)` request, wait until all of them wait for the engine, then let it run."""
    tasks = [asyncio.ensure_future(batcher.generate(prompts, params)) for prompts, params in requests]
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_waiting_requests_with_equal_parameters_run_as_one_call():
    engine, batcher, gate, worker = held_batcher()
    plain = SamplingParams(max_tokens=4, n=2)
    requests = [([[1, 2]], plain), ([[3], [4, 5]], plain), ([[6]], SamplingParams(max_tokens=4, n=2, seed=7)),
                ([[8]], plain), ([[9]], SamplingParams(max_tokens=5, n=2)), ([[10]], SamplingParams(max_tokens=5, n=2))]
    answers = asyncio.run(enqueue_then_release(batcher, gate, requests))
    # the three plain requests merge, past the seeded one, which runs alone; the max_tokens=5 pair is a batch too
    assert engine.calls == [[[1, 2], [3], [4, 5], [8]], [[6]], [[9], [10]]]
    assert batcher.calls == 3
    for (prompts, params), groups in zip(requests, answers):
        assert [[c.text for c in group] for group in groups] == [[f"{p}/{k}" for k in range(params.n)]
                                                                 for p in prompts]
    worker.shutdown()


def test_a_job_between_two_requests_keeps_them_apart_and_in_order():
    engine, batcher, gate, worker = held_batcher()
    params = SamplingParams(max_tokens=4)

    async def scenario():
        first = asyncio.ensure_future(batcher.generate([[1]], params))
        await asyncio.sleep(0)
        batcher.close()  # what the server does before it queues a weight update
        update = asyncio.get_running_loop().run_in_executor(worker, engine.calls.append, "update")
        second = asyncio.ensure_future(batcher.generate([[2]], params))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, update, second)

    asyncio.run(scenario())
    assert engine.calls == [[[1]], "update", [[2]]]
    worker.shutdown()


def test_batches_stop_at_the_prompt_cap_and_share_the_engines_error():
    engine, batcher, gate, worker = held_batcher(max_prompts=3)
    params = SamplingParams(max_tokens=4)
    asyncio.run(enqueue_then_release(batcher, gate, [([[1], [2]], params), ([[3], [4]], params), ([[5]], params)]))
    assert engine.calls == [[[1], [2], [5]], [[3], [4]]]  # the last request fits in the first batch
    worker.shutdown()

    failing, batcher, gate, worker = held_batcher(fail=True)
    errors = asyncio.run(enqueue_then_release(batcher, gate, [([[1]], params), ([[2]], params)]))
    assert len(failing.calls) == 1
    assert [str(e) for e in errors] == ["engine exploded", "engine exploded"]
    worker.shutdown()


def test_the_server_merges_concurrent_chat_requests_and_answers_each_its_own(tiny_model_dir):
    from rcl.serving.backends import HFBackend
    from rcl.serving.server import create_app

    backend = HFBackend(tiny_model_dir, dtype="float32", device="cpu", seed=0)
    app = create_app(backend, model_name="tiny")
    questions = ["Hi", "Question: 1+2?", "Question: what is seven times six, in words?"]

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rcl") as client:
            alone = [(await client.post("/v1/chat/completions", json=body(q))).json() for q in questions]
            gate = threading.Event()
            app.state.worker.submit(gate.wait)
            before = app.state.batcher.calls
            tasks = [asyncio.ensure_future(client.post("/v1/chat/completions", json=body(q))) for q in questions]
            while sum(len(batch.waiting) for batch in app.state.batcher._open) < len(questions):
                await asyncio.sleep(0.01)
            gate.set()
            together = [(await task).json() for task in tasks]
            return alone, together, app.state.batcher.calls - before

    def body(question):
        return {"messages": [{"role": "user", "content": question}], "max_tokens": 6, "temperature": 1.0, "n": 2,
                "return_token_ids": True}

    alone, together, calls = asyncio.run(scenario())
    assert calls == 1
    for single, merged in zip(alone, together):
        assert merged["prompt_token_ids"] == single["prompt_token_ids"]
        assert len(merged["choices"]) == 2
        assert merged["usage"]["prompt_tokens"] == len(single["prompt_token_ids"])
        assert merged["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in merged["choices"])
        assert all(1 <= len(c["token_ids"]) <= 6 for c in merged["choices"])
    app.state.worker.shutdown()


@pytest.mark.parametrize("seed", [None, 3])
def test_a_lone_request_is_answered_as_before(seed):
    engine = RecordingEngine()
    worker = ThreadPoolExecutor(max_workers=1)
    batcher = RequestBatcher(worker, engine.generate, max_prompts=10)
    groups = asyncio.run(batcher.generate([[4, 2]], SamplingParams(max_tokens=3, n=1, seed=seed)))
    assert engine.calls == [[[4, 2]]] and [[c.text for c in g] for g in groups] == [["[4, 2]/0"]]
    worker.shutdown()
