"""`ServerEngine` against a real server: same output format as `HFEngine`, splitting, errors."""

import pytest
from serving_support import free_port, server_env, start_server, stop_server

from rcl.engines import Completion, HFEngine, SamplingParams
from rcl.serving.client import ServerEngine, ServerError, split_evenly


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, server_env())
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return HFEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)


def test_split_evenly():
    assert split_evenly([1, 2, 3, 4, 5], 2) == [[1, 2, 3], [4, 5]]
    assert split_evenly([1], 3) == [[1], [], []]
    assert split_evenly([], 2) == [[], []]


@pytest.mark.parametrize("copies, api", [(1, "rcl"), (2, "rcl"), (2, "openai")])
def test_greedy_output_equals_hf_engine(served, local, copies, api):
    """Same prompts (equal length, so no padding differences), greedy: identical ids, reasons, log-prob lengths,
    through rcl's routes and through the OpenAI-style ones."""
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    params = SamplingParams(max_tokens=8, n=1, temperature=0, stop_token_ids=[20])
    remote = ServerEngine([served] * copies, local.tokenizer, health_timeout_s=30, api=api)
    got, want = remote.generate(prompts, params), local.generate(prompts, params)
    assert len(got) == 3 and all(len(g) == 1 for g in got)
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            assert type(g) is Completion
            assert (g.token_ids, g.finish_reason, g.text) == (w.token_ids, w.finish_reason, w.text)
            assert len(g.logprobs) == len(w.logprobs) == len(g.token_ids)
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
    remote.close()


@pytest.mark.parametrize("api", ["rcl", "openai"])
def test_n_completions_per_prompt_come_back_grouped_in_prompt_order(served, local, api):
    remote = ServerEngine([served, served], local.tokenizer, api=api)
    prompts = [[5, 6], [7], [8, 9, 10]]
    params = SamplingParams(max_tokens=5, n=3, temperature=0)
    want = [local.generate([prompt], params)[0] for prompt in prompts]
    assert len({tuple(group[0].token_ids) for group in want}) == 3, "prompts must decode differently to show order"
    out = remote.generate(prompts, params)
    assert [[(c.token_ids, c.finish_reason) for c in group] for group in out] == \
        [[(c.token_ids, c.finish_reason) for c in group] for group in want]
    assert all(len(c.logprobs) == len(c.token_ids) for group in out for c in group)
    assert remote.generate([], SamplingParams()) == []
    remote.close()


def test_the_openai_api_pushes_no_weights(served, local):
    remote = ServerEngine([served], local.tokenizer, api="openai")
    with pytest.raises(ServerError, match="take no weight pushes"):
        remote.update_weights([("lm_head.weight", local.model.lm_head.weight.detach())])
    remote.close()


def test_trl_style_response_without_finish_reasons(local):
    """A TRL server sends no finish reasons: they are inferred from the stop ids like HFEngine does."""
    engine = ServerEngine(["http://127.0.0.1:1"], local.tokenizer)
    eos = local.tokenizer.eos_token_id
    body = {"completion_ids": [[4, 5, eos], [4, 5, 6]], "logprobs": [[-0.1, -0.2, -0.3], [-0.1, -0.2, -0.3]]}
    (a, b), = engine._completions(body, 1, SamplingParams(max_tokens=3, n=2))
    assert (a.finish_reason, b.finish_reason) == ("stop", "length")
    assert a.logprobs == [-0.1, -0.2, -0.3]
    with pytest.raises(ServerError, match="returned 2 completions for 1 prompts x n=3"):
        engine._completions(body, 1, SamplingParams(n=3))


def test_server_finish_reasons_are_kept_and_text_drops_special_tokens(local):
    """An rcl server sends finish reasons: they are kept even where the stop ids alone would say otherwise (a stop
    string ended the row)."""
    engine = ServerEngine(["http://127.0.0.1:1"], local.tokenizer)
    eos = local.tokenizer.eos_token_id
    rows = [[40, 41, eos], [42, 43, 44]]
    body = {"completion_ids": rows, "logprobs": [[[-0.1], [-0.2], [-0.3]], [[-0.4], [-0.5], [-0.6]]],
            "finish_reasons": ["stop", "stop"]}
    (a, b), = engine._completions(body, 1, SamplingParams(max_tokens=3, n=2))
    assert (type(a), type(b)) == (Completion, Completion)
    assert (a.token_ids, a.logprobs, a.finish_reason) == (rows[0], [-0.1, -0.2, -0.3], "stop")
    assert (b.token_ids, b.logprobs, b.finish_reason) == (rows[1], [-0.4, -0.5, -0.6], "stop")
    assert a.text == local.tokenizer.decode(rows[0], skip_special_tokens=True) == local.tokenizer.decode(rows[0][:2])
    assert b.text == local.tokenizer.decode(rows[1], skip_special_tokens=True)


def test_server_that_never_comes_up_is_named(local):
    url = f"http://127.0.0.1:{free_port()}"
    engine = ServerEngine([url], local.tokenizer, health_timeout_s=1.0)
    with pytest.raises(ServerError, match=f"{url} not healthy after 1 s"):
        engine.generate([[1, 2]], SamplingParams())


def test_4xx_is_reported_with_the_server_message(served, local):
    engine = ServerEngine([served], local.tokenizer)
    with pytest.raises(ServerError, match=r"answered 422 to /generate/: prompt 0 is empty"):
        engine.generate([[]], SamplingParams())
