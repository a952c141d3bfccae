from dataclasses import replace

import pytest
import torch
from scipy import stats
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcl.engines import GenerationEngine, HFEngine, SamplingParams, sample_categorical, trim_completion


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return HFEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)


def _ids(engine, text):
    return engine.tokenizer(text, add_special_tokens=False).input_ids


def test_generate_returns_n_unpadded_completions_per_prompt(engine):
    prompts = [_ids(engine, "What is 47+38?"), _ids(engine, "Hi")]
    out = engine.generate(prompts, SamplingParams(max_tokens=6, n=3, seed=0))
    assert isinstance(engine, GenerationEngine)
    assert [len(group) for group in out] == [3, 3]
    for group in out:
        for c in group:
            assert 1 <= len(c.token_ids) <= 6
            assert len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert engine.pad_id not in c.token_ids[:-1]
            assert c.finish_reason == ("stop" if c.token_ids[-1] == engine.tokenizer.eos_token_id else "length")
            assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_the_seed_decides_the_samples_and_left_padding_is_neutral(engine):
    p = SamplingParams(max_tokens=5, n=2, temperature=1.0, seed=123)
    short, long_ = _ids(engine, "Hi"), _ids(engine, "What is 147+38? Think.")
    alone = engine.generate([short], SamplingParams(max_tokens=5, n=1, temperature=0.0))
    batched = engine.generate([long_, short], SamplingParams(max_tokens=5, n=1, temperature=0.0))
    assert alone[0][0].token_ids == batched[1][0].token_ids, "left padding must not change greedy output"
    a, b = engine.generate([short], p), engine.generate([short], p)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]
    other_seed = engine.generate([short], replace(p, seed=124))
    assert [c.token_ids for c in other_seed[0]] != [c.token_ids for c in a[0]]


def test_trim_completion_stops_at_any_stop_id_and_stop_string(engine):
    tok = engine.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    body = _ids(engine, "<solution>5</solution>")
    c = trim_completion(body + [eos, pad, pad], [-0.1] * (len(body) + 3), tok, SamplingParams())
    assert c.token_ids == body + [eos] and c.finish_reason == "stop" and len(c.logprobs) == len(body) + 1
    extra = body[0]
    c = trim_completion([5, extra, 7], None, tok, SamplingParams(stop_token_ids=[extra]))
    assert c.token_ids == [5, extra] and c.finish_reason == "stop"
    c = trim_completion(body + [7, 8], None, tok, SamplingParams(stop=["</solution>"]))
    assert c.token_ids == body and c.finish_reason == "stop"
    c = trim_completion([7, 8], None, tok, SamplingParams())
    assert c.finish_reason == "length"


def test_bad_params_are_refused(engine):
    with pytest.raises(ValueError, match="n and max_tokens"):
        engine.generate([[1, 2]], SamplingParams(n=0))


def test_sample_categorical_draws_each_rows_distribution(monkeypatch):
    torch.manual_seed(0)
    # unnormalised rows (sum 2) with a zero in the middle and at the end (what top-k leaves)
    probs = torch.tensor([[0.2, 0.0, 1.2, 0.6, 0.0]]).repeat(40_000, 1)
    counts = torch.bincount(sample_categorical(probs), minlength=5)
    assert counts[1] == 0 and counts[4] == 0
    expected = (probs[0, [0, 2, 3]] / 2 * probs.shape[0]).numpy()
    assert stats.chisquare(counts[[0, 2, 3]].numpy(), expected).pvalue > 1e-3
    # a uniform that rounds up to the row total still lands on the last token with mass, never on the zero tail
    monkeypatch.setattr(torch, "rand_like", torch.ones_like)
    assert sample_categorical(probs[:2]).tolist() == [3, 3]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0])
def test_sample_categorical_refuses_a_row_that_is_no_distribution(bad):
    probs = torch.tensor([[0.5, 0.5], [bad, 0.0 if bad == 0.0 else 1.0]])
    with pytest.raises(ValueError, match="invalid distribution"):
        sample_categorical(probs)


@pytest.mark.parametrize("stop", [[], ["zzz-never"]])  # a stop string that never matches changes nothing
def test_top_logprobs_are_the_sampling_distributions_most_likely_tokens(engine, stop):
    prompt = _ids(engine, "What is 47+38?")
    with torch.no_grad():
        raw = engine.model(torch.tensor([prompt])).logits[0, -1].float()
    for temperature in (1.0, 0.7):
        (group,) = engine.generate([prompt], SamplingParams(max_tokens=4, n=3, temperature=temperature, seed=5,
                                                            top_logprobs=4, stop=stop))
        expected = (raw / temperature).log_softmax(-1).topk(4)
        for c in group:
            assert len(c.top_logprobs) == len(c.token_ids)
            first = c.top_logprobs[0]  # the first token's distribution is the prompt's: compare with the model
            assert [i for i, _ in first] == expected.indices.tolist()
            assert [lp for _, lp in first] == pytest.approx(expected.values.tolist(), abs=1e-5)
            for token, logprob, alts in zip(c.token_ids, c.logprobs, c.top_logprobs):
                values = [lp for _, lp in alts]
                assert len(alts) == 4 and values == sorted(values, reverse=True) and logprob <= values[0] + 1e-6
                if token in dict(alts):
                    assert dict(alts)[token] == pytest.approx(logprob, abs=1e-6)
    # top-k 2 leaves two tokens with mass: the zero-probability ones are not listed; greedy picks the first
    (filtered,) = engine.generate([prompt], SamplingParams(max_tokens=3, n=2, top_k=2, top_logprobs=5, seed=1,
                                                           stop=stop))
    assert all(len(alts) == 2 for c in filtered for alts in c.top_logprobs)
    (greedy,) = engine.generate([prompt], SamplingParams(max_tokens=3, temperature=0, top_logprobs=1, stop=stop))
    assert [alts[0][0] for alts in greedy[0].top_logprobs] == greedy[0].token_ids
    (plain,) = engine.generate([prompt], SamplingParams(max_tokens=3, seed=1, stop=stop))
    assert plain[0].top_logprobs is None


def test_completion_penalties_count_only_the_completions_tokens():
    from rcl.engines import CompletionPenalties

    # prompt width 2: [9, 1] is the prompt; the completion so far is [1, 1, 3]
    seen = torch.tensor([[9, 1, 1, 1, 3]])
    scores = torch.zeros(1, 10)
    out = CompletionPenalties(prompt_width=2, frequency=0.5, presence=2.0)(seen, scores)
    expected = torch.zeros(1, 10)
    expected[0, 1] = -(0.5 * 2 + 2.0)  # twice in the completion
    expected[0, 3] = -(0.5 * 1 + 2.0)  # once; token 9 is only in the prompt, so it is not penalised
    assert torch.equal(out, expected)
    assert torch.equal(CompletionPenalties(5, 0.5, 2.0)(seen, scores), scores)  # nothing generated yet


def test_bias_and_penalties_with_and_without_stop_strings(engine):
    """A stop string that never matches changes nothing (the same greedy tokens under the penalties), and a +100
    bias makes a token certain."""
    prompt = _ids(engine, "What is 47+38?")
    for params in (SamplingParams(max_tokens=8, temperature=0, presence_penalty=1.5, frequency_penalty=0.5),
                   SamplingParams(max_tokens=5, temperature=1.0, seed=0, logit_bias={42: 100.0})):
        plain = engine.generate([prompt], params)[0][0].token_ids
        with_stop = engine.generate([prompt], replace(params, stop=["zzz-never"]))[0][0].token_ids
        assert plain == with_stop
    assert plain == [42] * 5


def test_min_tokens_and_ignore_eos_with_and_without_stop_strings(engine):
    eos = engine.tokenizer.eos_token_id
    prompt = _ids(engine, "Hi")
    for stop in ([], ["zzz-never"]):
        certain = SamplingParams(max_tokens=5, seed=0, logit_bias={eos: 100.0}, stop=stop)
        assert engine.generate([prompt], certain)[0][0].token_ids == [eos]
        (late,) = engine.generate([prompt], replace(certain, min_tokens=2))[0]
        assert late.token_ids[2:] == [eos] and eos not in late.token_ids[:2] and late.finish_reason == "stop"
        (ignored,) = engine.generate([prompt], replace(certain, ignore_eos=True))[0]
        assert ignored.token_ids == [eos] * 5 and ignored.finish_reason == "length"


def test_a_stop_string_ends_the_row_in_the_sampling_loop(engine):
    """Greedy rows with a stop string taken from their own text: each ends at the token that completes its first
    occurrence, with finish reason "stop", and is a prefix of the row without it."""
    prompts = [_ids(engine, "What is 47+38?"), _ids(engine, "Hi")]
    free = [g[0] for g in engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0))]
    tok = engine.tokenizer
    stop = tok.decode(free[0].token_ids[3:5], skip_special_tokens=False)
    stopped = [g[0] for g in engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0, stop=[stop]))]
    for before, after in zip(free, stopped):
        assert before.token_ids[: len(after.token_ids)] == after.token_ids
        texts = [tok.decode(before.token_ids[:i], skip_special_tokens=False) for i in range(17)]
        first = next((i for i, text in enumerate(texts) if stop in text), None)
        if first is None:
            assert after.token_ids == before.token_ids
        else:
            assert len(after.token_ids) == first and after.finish_reason == "stop"
    assert len(stopped[0].token_ids) <= 5
