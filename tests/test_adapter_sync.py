"""Adapter-only sync to an `rcl serve --enable-lora` hf server: after each push the server generates exactly what
the trainer's merged model generates; a server without --enable-lora refuses; the merge maths is peft's."""

import copy

import pytest
import torch
from serving_support import server_env, start_server, stop_server

from callbacks.weight_sync import WeightSync, WeightSyncError
from rcl import lora
from rcl.engines import HFEngine, SamplingParams
from rcl.lora import LoraArgs
from rcl.serving.adapters import decode_adapter, encode_adapter, merged_targets
from rcl.serving.client import ServerEngine


@pytest.fixture(scope="module")
def lora_server(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, server_env(), "--enable-lora")
    yield url
    stop_server(proc)


def lora_policy(model_dir, seed, **kwargs):
    model = lora.load_for_training(model_dir, LoraArgs(enabled=True, r=4, alpha=8.0, target_modules="all", **kwargs))
    nudge(model, seed)
    return model


def nudge(model, seed):
    """Move every adapter tensor, as a training step would (B starts at zero, so the adapter starts as a no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


class OneProcess:
    global_rank = 0

    def broadcast(self, obj, src=0):
        return obj


def greedy(engine, prompts):
    return [c[0].token_ids for c in engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0))]


def test_server_generates_what_the_merged_trainer_model_generates(lora_server, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = ServerEngine([lora_server], tok)
    policy = lora_policy(tiny_model_dir, seed=1)
    prompts = [[5, 6, 7, 8], [40, 41, 42], [9, 200, 13, 77, 3]]
    base = greedy(engine, prompts)
    sync = WeightSync(adapter_only=True)
    for step in range(2):  # each version is merged into the pristine base, not into the previous merge
        if step:
            nudge(policy, seed=7)
        stats = sync.sync(OneProcess(), policy, engine)
        assert stats["bytes"] > 0
        local = greedy(HFEngine(policy.eval(), tok), prompts)  # the peft model computes W + s * B @ A on the fly
        merged = copy.deepcopy(policy).merge_and_unload()  # and the trainer's merged model
        assert greedy(engine, prompts) == local == greedy(HFEngine(merged, tok), prompts)
    assert local != base, "the adapter must change what is generated, or the test shows nothing"
    assert engine._request(lora_server, "GET", "/adapter_version/")["adapter_version"] == 2


def test_a_server_without_enable_lora_refuses_adapters(tiny_model_dir):
    from transformers import AutoTokenizer

    proc, url = start_server(tiny_model_dir, server_env())
    try:
        engine = ServerEngine([url], AutoTokenizer.from_pretrained(tiny_model_dir))
        with pytest.raises(WeightSyncError, match="--enable-lora"):
            WeightSync(adapter_only=True).sync(OneProcess(), lora_policy(tiny_model_dir, 1), engine)
    finally:
        stop_server(proc)


def test_encoded_adapter_round_trips_and_merges_like_peft(tiny_model_dir):
    policy = lora_policy(tiny_model_dir, seed=3)
    tensors, config = decode_adapter(encode_adapter(policy))
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert tensors and all("lora_" in k for k in tensors)
    base = {k: v.clone() for k, v in lora.load_for_training(tiny_model_dir, LoraArgs()).state_dict().items()}
    ours = merged_targets(base, tensors, config)
    reference = policy.merge_and_unload().state_dict()
    assert len(ours) == 7 * 4  # seven projections in four layers
    for name, value in ours.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6)


def test_a_head_tied_to_the_embeddings_is_refused_by_the_merging_host(tiny_model_dir):
    from rcl.serving.adapters import MergingAdapterHost
    from transformers import AutoModelForCausalLM

    policy = lora_policy(tiny_model_dir, seed=4, modules_to_save=["lm_head"])
    tensors, config = decode_adapter(encode_adapter(policy))
    host = MergingAdapterHost(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    with pytest.raises(ValueError, match="ties"):
        host.load(tensors, config, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM LoRA serving needs a CUDA GPU")
def test_vllm_serves_the_pushed_adapter_like_the_trainers_merged_model(tiny_model_dir):
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    proc, url = start_server(tiny_model_dir, server_env(), "--engine", "vllm", "--dtype", "float32", "--enable-lora",
                             "--max-lora-rank", "8", "--enforce-eager", "--gpu-memory-utilization", "0.3",
                             timeout_s=600)
    try:
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        engine = ServerEngine([url], tok, health_timeout_s=600)
        policy = lora_policy(tiny_model_dir, seed=1)
        prompts = [[5, 6, 7, 8], [40, 41, 42]]
        WeightSync(adapter_only=True).sync(OneProcess(), policy, engine)
        assert greedy(engine, prompts) == greedy(HFEngine(policy.eval(), tok), prompts)
    finally:
        stop_server(proc)
