"""`serving`: concurrent OpenAI-style chat requests against the server app, one at a time and all at once.

The app is `rcl.serving.server.create_app` over an `hf` backend, called in process through httpx's ASGI transport
(the HTTP routes, validation, rendering and batching are all on the path; the sockets are not). All at once, the
requests that wait for the engine together run as one batched generation (`rcl.serving.batching`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import asdict, dataclass

from experiments.benchmarks.common import format_table


@dataclass
class ServingBenchConfig:
    preset: str = "tiny-1m"
    requests: int = 16
    max_tokens: int = 32
    reps: int = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny-1m")
    parser.add_argument("--requests", type=int, default=16, help="chat requests per round")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3, help="alternating rounds of each mode")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")


def config_from(ns: argparse.Namespace) -> ServingBenchConfig:
    return ServingBenchConfig(preset=ns.preset, requests=ns.requests, max_tokens=ns.max_tokens, reps=ns.reps)


def run_benchmark(cfg: ServingBenchConfig) -> dict:
    import httpx

    from rcl.serving.backends import HFBackend
    from rcl.serving.server import create_app
    from rcl.tiny_models import resolve_model

    app = create_app(HFBackend(resolve_model(cfg.preset), dtype="float32", device="cpu"), model_name="bench")
    questions = [f"Question: what is {i} plus {2 * i + 3}?" for i in range(cfg.requests)]

    def body(question: str) -> dict:
        return {"messages": [{"role": "user", "content": question}], "max_tokens": cfg.max_tokens, "temperature": 1.0}

    async def rounds() -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {"one at a time": [], "all at once": []}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rcl",
                                     timeout=600) as client:

            async def one(question: str) -> int:
                response = await client.post("/v1/chat/completions", json=body(question))
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"]

            await one(questions[0])  # warm-up
            for _ in range(cfg.reps):
                for mode in out:
                    calls, start = app.state.batcher.calls, time.perf_counter()
                    if mode == "one at a time":
                        tokens = [await one(q) for q in questions]
                    else:
                        tokens = await asyncio.gather(*(one(q) for q in questions))
                    seconds = time.perf_counter() - start
                    out[mode].append({"seconds": seconds, "tokens": sum(tokens),
                                      "engine_calls": app.state.batcher.calls - calls})
        return out

    runs = asyncio.run(rounds())
    app.state.worker.shutdown()
    summary = {mode: {"seconds": statistics.median(r["seconds"] for r in rs),
                      "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in rs),
                      "engine_calls": statistics.median(r["engine_calls"] for r in rs)} for mode, rs in runs.items()}
    return {"config": asdict(cfg), "runs": runs, "summary": summary}


def table(result: dict) -> str:
    cfg, summary = result["config"], result["summary"]
    base = summary["one at a time"]["seconds"]
    rows = [[mode, s["seconds"], s["tokens_per_s"], s["engine_calls"], base / s["seconds"]]
            for mode, s in summary.items()]
    head = (f"{cfg['requests']} chat requests x up to {cfg['max_tokens']} tokens, {cfg['preset']}, hf engine "
            f"(median of {cfg['reps']} alternating rounds)")
    headers = ["requests", "s per round", "completion tok/s", "engine calls", "x one at a time"]
    return head + "\n" + format_table(headers, rows)
