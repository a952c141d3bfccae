"""The vllm engine. Without vLLM: a one-line error naming the extra. With vLLM (CPU build, own venv): a real server.

vLLM pins its own torch and transformers, so it lives in a separate environment. `.ci/vllm_cpu` builds one with
vLLM's CPU build (`vllm-cpu`) and runs the `vllm_cpu` tests here: generation, log-probs equal to the training forward
pass's, and a weight update in several buckets after which the server generates what the updated model generates.
"""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from serving_support import free_port, listening, server_env, start_server, stop_server, trl_style_push

from rcl.engines import HFEngine, SamplingParams
from rcl.grpo import completion_logprobs
from rcl.serving.client import ServerEngine
from rcl.serving.server import cli_main
from rcl.serving.weights import iter_full_state

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_missing_vllm_is_one_line_naming_the_extra():
    with pytest.raises(SystemExit) as exc:
        cli_main(["--model", "tiny-1m", "--engine", "vllm"])
    message = str(exc.value.code)
    assert "\n" not in message and "pip install 'rcl[vllm]'" in message and message.startswith("rcl serve:")


@pytest.mark.vllm_cpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM: run .ci/vllm_cpu")
def test_vllm_server_generates_and_loads_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc, url = start_server(tiny_model_dir, server_env(), "--engine", "vllm", "--dtype", "float32",
                             "--max-model-len", "256", "--enforce-eager",
                             "--gpu-memory-utilization", "0.1", timeout_s=300)  # on CPU: a share of RAM
    try:
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        engine = ServerEngine([url], tok)
        greedy = SamplingParams(max_tokens=8, temperature=0)
        prompts = [[5, 6, 7, 8]]
        sampled = engine.generate(prompts, SamplingParams(max_tokens=6, n=3, temperature=0.8, seed=0))
        assert [len(g) for g in sampled] == [3]
        for c in sampled[0]:  # the behaviour log-probs the PPO ratio uses: those of the training forward pass
            ids = torch.tensor([prompts[0] + c.token_ids])
            with torch.no_grad():
                ours = completion_logprobs(model, ids, torch.ones_like(ids), len(c.token_ids), temperature=0.8)
            torch.testing.assert_close(torch.tensor([c.logprobs]), ours, atol=1e-4, rtol=1e-4)
        # HTTP buckets, then buckets over a gloo weight group (vLLM's CPU build has no NCCL)
        for transport in ("http", "gloo"):
            pusher = ServerEngine([url], tok, weight_transport=transport, group_port=free_port())
            try:
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.05)
                stats = pusher.update_weights(iter_full_state(model), bucket_bytes=1 << 16)
                assert stats["buckets"] > 1
                local = HFEngine(model, tok).generate(prompts, greedy)
                assert pusher.generate(prompts, greedy)[0][0].token_ids == local[0][0].token_ids, transport
            finally:
                pusher.close()
        # TRL's per-tensor protocol over the same kind of group, completed by the prefix-cache reset
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        assert trl_style_push(url, iter_full_state(model), free_port()).status_code == 200
        local = HFEngine(model, tok).generate(prompts, greedy)
        assert engine.generate(prompts, greedy)[0][0].token_ids == local[0][0].token_ids
    finally:
        stop_server(proc)


@pytest.mark.vllm_cpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM: run .ci/vllm_cpu")
def test_rcl_client_generates_against_vllms_own_server(tiny_model_dir):
    """`vllm serve` (what TRL >= 1.16 runs) speaks the OpenAI-style routes: ServerEngine(api="openai") generates there,
    as a student pool would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    port = free_port()
    # `vllm serve` itself, by module: the `vllm` script looks up a distribution named vllm, and the CPU build's is vllm-cpu
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir, "--port", str(port),
           "--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--gpu-memory-utilization", "0.1",
           "--logprobs-mode", "processed_logprobs", "--seed", "0"]
    log = Path(tiny_model_dir).parent / f"vllm-serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=server_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while not listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        engine = ServerEngine([url], tok, api="openai", health_timeout_s=300)
        prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
        greedy = SamplingParams(max_tokens=8, temperature=0)
        got, want = engine.generate(prompts, greedy), HFEngine(model, tok).generate(prompts, greedy)
        assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
        assert [[c.text for c in g] for g in got] == [[c.text for c in g] for g in want]
        sampled = engine.generate(prompts[:1], SamplingParams(max_tokens=6, n=3, temperature=0.8, seed=0))
        assert [len(g) for g in sampled] == [3]
        for c in sampled[0]:
            ids = torch.tensor([prompts[0] + c.token_ids])
            with torch.no_grad():
                ours = completion_logprobs(model, ids, torch.ones_like(ids), len(c.token_ids), temperature=0.8)
            torch.testing.assert_close(torch.tensor([c.logprobs]), ours, atol=1e-4, rtol=1e-4)
        engine.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_vllms_logprob_dicts_become_the_k_most_likely_tokens():
    from types import SimpleNamespace as Logprob

    from rcl.serving.vllm_engine import top_of

    # vLLM lists the sampled token at its own rank (here 7) beside the k = 2 most likely
    step = {11: Logprob(rank=7, logprob=-4.0), 5: Logprob(rank=2, logprob=-1.5), 9: Logprob(rank=1, logprob=-0.3)}
    assert top_of(step, 2) == [(9, -0.3), (5, -1.5)]
    assert top_of({3: Logprob(rank=1, logprob=-0.1), 4: Logprob(rank=2, logprob=float("-inf"))}, 2) == [(3, -0.1)]
