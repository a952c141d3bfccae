"""The speed paths keep the results of the slow ones: shared-prompt log-probs (rcl.grpo) and HFEngine's own
KV-cache sampling loop (rcl.engines)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rcl.grpo as grpo
from rcl.engines import HFEngine, SamplingParams


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def _grouped_batch(pad: int, groups: int = 3, size: int = 4, prompt: int = 7, completion: int = 6):
    g = torch.Generator().manual_seed(1)
    rows, masks = [], []
    for u in range(groups):
        length = prompt - u  # different left padding per group
        p = torch.cat([torch.full((prompt - length,), pad), torch.randint(5, 300, (length,), generator=g)])
        for j in range(size):
            c = torch.randint(5, 300, (completion,), generator=g)
            keep = completion - (j % 3)  # ragged, right-padded completions
            c[keep:] = pad
            rows.append(torch.cat([p, c]))
            masks.append(torch.cat([(torch.arange(prompt) >= prompt - length), torch.arange(completion) < keep]).long())
    return torch.stack(rows), torch.stack(masks)


def _logps_and_grads(model, ids, mask, completion, share: bool, monkeypatch):
    """Also returns the number of distinct prompts of each `shared_prompt_logprobs` call the run made."""
    shared_prompt_counts = []
    real_shared_prompt_logprobs = grpo.shared_prompt_logprobs

    def counting_shared_prompt_logprobs(model, input_ids, attention_mask, position_ids, completion_len, first, inverse,
                                        temperature):
        shared_prompt_counts.append(len(first))
        return real_shared_prompt_logprobs(model, input_ids, attention_mask, position_ids, completion_len, first,
                                           inverse, temperature)

    monkeypatch.setattr(grpo, "shared_prompt_logprobs", counting_shared_prompt_logprobs)
    if not share:
        monkeypatch.setattr(grpo, "_can_share_prompts", lambda m: False)
    model.zero_grad()
    logp = grpo.completion_logprobs(model, ids, mask, completion, 0.7)
    (logp * mask[:, -completion:]).sum().backward()
    monkeypatch.undo()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, shared_prompt_counts


def test_shared_prompt_logprobs_and_gradients_equal_the_full_forward(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    ids, mask = _grouped_batch(tok.pad_token_id, groups=3)
    assert grpo._can_share_prompts(model)
    shared, g_shared, shared_calls = _logps_and_grads(model, ids, mask, 6, True, monkeypatch)
    full, g_full, full_calls = _logps_and_grads(model, ids, mask, 6, False, monkeypatch)
    assert shared_calls == [3] and full_calls == []
    active = mask[:, -6:].bool()
    torch.testing.assert_close(shared[active], full[active], atol=1e-5, rtol=0)
    for name in g_full:
        torch.testing.assert_close(g_shared[name], g_full[name], atol=1e-5, rtol=1e-3, msg=name)


def test_shared_prompt_logprobs_with_a_one_token_completion(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    ids, mask = _grouped_batch(tok.pad_token_id, groups=3, completion=1)
    shared, _, shared_calls = _logps_and_grads(model, ids, torch.ones_like(mask), 1, True, monkeypatch)
    full, _, full_calls = _logps_and_grads(model, ids, torch.ones_like(mask), 1, False, monkeypatch)
    assert shared_calls == [3] and full_calls == []
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)


def test_no_sharing_under_gradient_checkpointing(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not grpo._can_share_prompts(model)


def test_greedy_sampling_loop_matches_hf_generate_with_left_padding(model_and_tokenizer):
    model, tok = model_and_tokenizer
    engine = HFEngine(model, tok)
    prompts = [tok("What is 147+38? Think.", add_special_tokens=False).input_ids, tok("Hi", add_special_tokens=False).input_ids]
    out = engine.generate(prompts, SamplingParams(max_tokens=8, n=2, temperature=0.0))
    for prompt, group in zip(prompts, out):
        ids = torch.tensor([prompt])
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert [c.token_ids for c in group] == [ref, ref]


@pytest.mark.parametrize("top_k", [0, 40])
def test_sampled_rows_that_stop_early_keep_correct_logprobs(model_and_tokenizer, top_k):
    model, tok = model_and_tokenizer
    engine = HFEngine(model, tok)
    prompts = [tok("What is 4+5?", add_special_tokens=False).input_ids, tok("Hi there", add_special_tokens=False).input_ids]
    # a stop set of a third of the vocabulary makes rows stop at different steps, so finished rows leave the batch
    stops = list(range(0, len(tok), 3))
    params = SamplingParams(max_tokens=12, n=6, temperature=1.3, top_k=top_k, seed=3, stop_token_ids=stops)
    out = engine.generate(prompts, params)
    again = engine.generate(prompts, params)
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in again], "seeded"
    lengths = {len(c.token_ids) for g in out for c in g}
    assert len(lengths) >= 3 and min(lengths) < 12 and max(lengths) <= 12
    assert all((c.finish_reason == "stop") == (c.token_ids[-1] in stops) for g in out for c in g)
    for prompt, group in zip(prompts, out):
        for c in group:
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1] / 1.3
            if top_k:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=1e-4)
