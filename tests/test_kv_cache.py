"""The sampling loop's preallocated KV cache generates exactly what transformers' DynamicCache generates."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

import rcl.kv_cache as kv
from rcl.engines import HFEngine, SamplingParams


def _generate(engine, prompts, params, monkeypatch, plain: bool):
    if plain:
        monkeypatch.setattr(kv, "preallocated_cache", lambda config, capacity: DynamicCache(config=config))
    else:
        monkeypatch.undo()
    out = engine.generate(prompts, params)
    return [[(c.token_ids, c.logprobs, c.finish_reason) for c in group] for group in out]


def test_same_tokens_and_logprobs_as_dynamic_cache_with_early_stops(tiny_model_dir, monkeypatch):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = HFEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)
    prompts = [tok("What is 47+38?", add_special_tokens=False).input_ids, tok("Hi", add_special_tokens=False).input_ids]
    # a frequent token as a stop id, so rows leave the batch at different steps (batch_select_indices)
    params = SamplingParams(max_tokens=24, n=4, temperature=1.0, seed=3, stop_token_ids=[prompts[0][0], 5, 6, 7])
    plain = _generate(engine, prompts, params, monkeypatch, plain=True)
    fast = _generate(engine, prompts, params, monkeypatch, plain=False)
    assert fast == plain
    lengths = {len(ids) for group in fast for ids, _, _ in group}
    assert len(lengths) > 1, "some rows stopped early, so the cache dropped rows mid-generation"


def test_a_layer_grows_past_its_capacity_and_keeps_batch_operations_exact():
    layer = kv.PreallocatedLayer(capacity=2)
    reference = []
    for step in range(5):
        k = torch.full((2, 1, 1, 3), float(step))
        keys, values = layer.update(k, -k)
        reference.append(k)
        assert torch.equal(keys, torch.cat(reference, dim=-2)) and torch.equal(values, -keys)
    assert layer.get_seq_length() == 5 and layer.capacity >= 5
    layer.batch_repeat_interleave(2)
    assert layer.keys.shape == (4, 1, 5, 3)
    layer.batch_select_indices(torch.tensor([3]))
    assert layer.keys.shape == (1, 1, 5, 3) and torch.equal(layer.keys[0, 0, :, 0], torch.arange(5.0))
    layer.crop(-2)
    assert layer.get_seq_length() == 3 and layer.keys.shape[-2] == 3
