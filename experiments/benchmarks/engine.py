"""Generation and weight-sync micro-benchmarks.

    python -m experiments.benchmarks engine

1. rcl's `HFEngine` against a plain `model.generate` loop: batch 32 (4 prompts x n=8 for the engine, the same 32
   rows for plain generate), 64 new tokens, sampling at T=1. Both produce exactly 64 tokens per row: plain generate
   with `min_new_tokens=64`, the engine with eos switched off (a tokenizer view whose eos is an id outside the vocabulary).
   Each preset runs twice: without stop strings, and with two that the model never writes (checked at every step).
2. Weight sync of a preset to a local `python -m rcl serve --engine hf` server through `ServerEngine.update_weights`:
   one big HTTP bucket, one HTTP request per tensor (a bucket smaller than any tensor), and one big bucket broadcast
   over a gloo weight group.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import torch

from experiments.benchmarks.common import ROOT, format_table, spread, worker_env

PROMPTS, N, NEW_TOKENS = 4, 8, 64
NEVER_STOPS = ("</never-written>", "\n\n\n\n\n\n")
"""Stop strings the tiny models do not write: both sides check them at every step and still generate every token."""


class _NoEosTokenizer:
    """A view of a tokenizer whose eos is an id the model cannot sample, so every requested token is generated."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self._tokenizer = tokenizer
        self.eos_token_id = vocab_size
        self.pad_token_id = tokenizer.pad_token_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _prompts(tokenizer: Any, count: int) -> list[list[int]]:
    from data_modules.synthetic import generate_problems
    from rcl.prompts import PromptTemplates, render_prompt, student_messages

    problems = generate_problems(count, seed=1)
    texts = [render_prompt(tokenizer, student_messages(PromptTemplates(), "baseline", p["question"])) for p in problems]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def generation_benchmark(preset: str, reps: int = 3, prompts: int = PROMPTS, n: int = N,
                         new_tokens: int = NEW_TOKENS, stop: tuple[str, ...] = ()) -> dict:
    """Seconds per batch of `prompts` x `n` rows of `new_tokens` tokens: rcl HFEngine vs plain `model.generate`,
    alternating, after a warm-up of each; `stop`: stop strings both sides check at every step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rcl.engines import HFEngine, SamplingParams
    from rcl.tiny_models import resolve_model

    folder = resolve_model(preset)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    questions = _prompts(tokenizer, prompts)
    engine = HFEngine(model, _NoEosTokenizer(tokenizer, model.config.vocab_size))
    params = SamplingParams(max_tokens=new_tokens, n=n, temperature=1.0, seed=0, stop=list(stop))
    stop_kwargs = dict(stop_strings=list(stop), tokenizer=tokenizer) if stop else {}
    ids, mask = _left_pad([p for p in questions for _ in range(n)], tokenizer.pad_token_id)

    def run_engine() -> int:
        out = engine.generate(questions, params)
        return sum(len(c.token_ids) for group in out for c in group)

    @torch.inference_mode()
    def run_plain() -> int:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, **stop_kwargs)
        return out[:, ids.shape[1]:].numel()

    runners = {"rcl HFEngine": run_engine, "plain model.generate": run_plain}
    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, int] = {}
    for fn in runners.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in runners.items():
            start = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - start)
    rows = {}
    for name in runners:
        s = spread(times[name])
        rows[name] = {"seconds": s, "tokens": tokens[name], "tokens_per_s": tokens[name] / s["median"]}
    return rows


# ----------------------------------------------------------------------------------------------------- weight sync
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`python -m rcl serve --engine hf` on a free local port, stopped (by its own pid) on exit."""

    def __init__(self, model: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "rcl", "serve", "--model", model, "--engine", "hf", "--device", "cpu",
               "--port", str(self.port), "--log-level", "warning"]
        env = {**worker_env(), "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as many threads as the caller
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def weight_sync_benchmark(preset: str, reps: int = 3) -> dict:
    """Seconds per full weight push, alternating: one big HTTP bucket, one HTTP request per tensor, and one big
    bucket broadcast over a gloo weight group."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rcl.serving.client import ServerEngine
    from rcl.serving.weights import iter_full_state
    from rcl.tiny_models import resolve_model

    folder = resolve_model(preset)
    model = AutoModelForCausalLM.from_pretrained(folder)
    named = list(iter_full_state(model))
    smallest = min(t.numel() * t.element_size() for _, t in named)
    modes = {"http, bucketed (64 MiB)": ("http", 64 << 20), "http, per tensor": ("http", max(1, smallest - 1)),
             "gloo group, bucketed (64 MiB)": ("gloo", 64 << 20)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    stats: dict[str, dict] = {}
    with LocalServer(folder) as server:
        tok = AutoTokenizer.from_pretrained(folder)
        engines = {t: ServerEngine([server.url], tok, weight_transport=t, group_port=free_port())
                   for t in ("http", "gloo")}
        try:
            for mode, (transport, size) in modes.items():  # warm-up (connection, group set-up, first load)
                engines[transport].update_weights(named, bucket_bytes=size)
            for _ in range(reps):
                for mode, (transport, size) in modes.items():
                    stats[mode] = engines[transport].update_weights(named, bucket_bytes=size)
                    times[mode].append(stats[mode]["seconds"])
        finally:
            for engine in engines.values():
                engine.close()
    return {
        mode: {"seconds": spread(times[mode]), "buckets": stats[mode]["buckets"], "megabytes": stats[mode]["bytes"] / 2**20}
        for mode in modes
    }


def run_engine_benchmarks(presets: list[str], reps: int, sync_preset: str = "tiny-10m", log=print) -> dict:
    generation = {}
    for preset in presets:
        log(f"[engine] generation {preset}")
        generation[preset] = generation_benchmark(preset, reps)
        generation[f"{preset}, 2 stop strings"] = generation_benchmark(preset, reps, stop=NEVER_STOPS)
    log(f"[engine] weight sync {sync_preset}")
    sync = weight_sync_benchmark(sync_preset, reps)
    return {"generation": generation, "weight_sync": {sync_preset: sync}, "reps": reps}


def _rows_against(section: dict, baseline: str, extra) -> list[list]:
    """One row per (preset, variant): `extra(entry)` columns, then seconds and the ratio to `baseline`."""
    rows = []
    for preset, entries in section.items():
        base = entries[baseline]["seconds"]["median"]
        for name, r in entries.items():
            s = r["seconds"]
            rows.append([preset, name, *extra(r), s["median"], s["min"], s["max"], s["median"] / base])
    return rows


def tables(result: dict) -> str:
    text = (f"Generation: batch {PROMPTS * N} ({PROMPTS} prompts x n={N}), {NEW_TOKENS} new tokens per row, "
            f"T=1, fp32, {result['reps']} alternating repetitions after a warm-up\n")
    gen_rows = _rows_against(result["generation"], "plain model.generate", lambda r: (r["tokens"], r["tokens_per_s"]))
    text += format_table(("preset", "engine", "tokens", "tok/s", "s median", "min", "max", "vs plain"), gen_rows)
    sync_rows = _rows_against(result["weight_sync"], "http, per tensor", lambda r: (r["buckets"], r["megabytes"]))
    text += "\n\nWeight sync to a local `rcl serve --engine hf` server (HTTP bodies or a gloo weight group)\n"
    text += format_table(("preset", "mode", "buckets", "MiB", "s median", "min", "max", "vs per tensor"), sync_rows)
    return text
