"""A real `python -m rcl serve --engine hf` subprocess: generation, limits, errors, auth, shutdown."""

import json
from itertools import accumulate

import pytest
import requests
import torch
from safetensors.torch import save
from serving_support import server_env, start_server, stop_server

from rcl.serving.protocol import ChatCompletionsRequest, CompletionsRequest, ServerLimits
from rcl.serving.server import _prompt_ids, chat_request_prompt_ids


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, server_env(), "--max-n", "8", "--max-tokens", "64",
                             "--served-model-name", "tiny", "teacher", "--trust-request-chat-template")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def post(url, path, **body):
    return requests.post(f"{url}{path}", json=body, timeout=60)


def test_health_and_world_size(server):
    assert requests.get(f"{server}/health/").json() == {"status": "ok"}
    assert requests.get(f"{server}/get_world_size/").json() == {"world_size": 1}
    assert requests.get(f"{server}/weights_version/").json() == {"weights_version": 0, "last_error": None}


def test_generate_text_prompts_with_n(server, tokenizer):
    r = post(server, "/generate/", prompts=["Question: 2+2?", "Hi"], n=3, max_tokens=6, temperature=1.0, seed=1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prompt_ids"] == [tokenizer("Question: 2+2?")["input_ids"], tokenizer("Hi")["input_ids"]]
    assert len(body["completion_ids"]) == 6 and len(body["finish_reasons"]) == 6
    for ids, lps, lp_ids, reason in zip(body["completion_ids"], body["logprobs"], body["logprob_token_ids"],
                                        body["finish_reasons"]):
        assert 1 <= len(ids) <= 6
        assert len(lps) == len(ids) and all(len(step) == 1 and step[0] <= 0 for step in lps)
        assert [step[0] for step in lp_ids] == ids
        assert reason == ("stop" if ids[-1] == tokenizer.eos_token_id else "length")
        if reason == "length":
            assert len(ids) == 6


def test_generate_token_ids_and_stop_reason(server):
    prompt = [5, 17, 42, 9]
    first = post(server, "/generate/", prompts=[prompt], temperature=0, max_tokens=1).json()
    token = first["completion_ids"][0][0]
    r = post(server, "/generate/", prompts=[prompt], temperature=0, max_tokens=10, stop_token_ids=[token]).json()
    assert r["prompt_ids"] == [prompt]
    assert r["completion_ids"] == [[token]] and r["finish_reasons"] == ["stop"]
    none = post(server, "/generate/", prompts=[prompt], temperature=0, max_tokens=2, logprobs=None).json()
    assert none["logprobs"] is None and len(none["completion_ids"][0]) >= 1


def test_same_seed_same_samples_other_seed_other_samples(server):
    a = post(server, "/generate/", prompts=[[3, 4, 5]], n=2, max_tokens=8, temperature=1.0, seed=7).json()
    b = post(server, "/generate/", prompts=[[3, 4, 5]], n=2, max_tokens=8, temperature=1.0, seed=7).json()
    other = post(server, "/generate/", prompts=[[3, 4, 5]], n=2, max_tokens=8, temperature=1.0, seed=8).json()
    assert a["completion_ids"] == b["completion_ids"]
    assert other["completion_ids"] != a["completion_ids"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        (dict(prompts=["x"], n=9), 422, "n=9 is more than the server limit 8"),
        (dict(prompts=["x"], max_tokens=65), 422, "max_tokens=65"),
        (dict(prompts=[]), 422, "prompts"),
        (dict(prompts=[""]), 422, "prompt 0 is empty"),
        (dict(prompts=[[1, 10**7]]), 422, "outside the vocabulary"),
        (dict(prompts="hello", n="many"), 422, "n: Input should be a valid integer"),
        (dict(prompts=["x"], temperature=-1), 422, "temperature"),
        (dict(prompts=["x"], images=["abc"]), 422, "images are not supported"),
        (dict(prompts=["x"], generation_kwargs={"beam_width": 2}), 422, "unsupported generation_kwargs"),
        (dict(n=1), 422, "prompts: Field required"),
    ],
)
def test_bad_generate_requests_are_4xx_with_a_message(server, body, status, words):
    r = post(server, "/generate/", **body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert requests.get(f"{server}/health/").status_code == 200


def test_bad_weight_requests(server):
    r = requests.post(f"{server}/update_weights/?update_id=a&last=true", data=b"not safetensors")
    assert r.status_code == 400 and "not a safetensors file" in r.json()["detail"]
    r = requests.post(f"{server}/update_weights/?update_id=a", data=save({"no.such.weight": torch.zeros(2)}))
    assert r.status_code == 400 and "unknown weight 'no.such.weight'" in r.json()["detail"]
    r = requests.post(f"{server}/update_weights/?update_id=a", data=save({"lm_head.weight": torch.zeros(2)}))
    assert r.status_code == 400 and "shape mismatch" in r.json()["detail"]
    r = post(server, "/init_communicator/", host="127.0.0.1", port=29999, world_size=2, group_kind="nccl")
    assert r.status_code == 501 and "gloo, not nccl" in r.json()["detail"] and "/update_weights/" in r.json()["detail"]
    r = post(server, "/init_communicator/", host="127.0.0.1", port=29999, world_size=3)
    assert r.status_code == 422 and "1 workers + 1 client" in r.json()["detail"]
    r = post(server, "/update_bucket/", tensors=[])
    assert r.status_code == 422
    r = post(server, "/update_bucket/", tensors=[{"name": "lm_head.weight", "dtype": "float32", "shape": [2]}])
    assert r.status_code == 409 and "POST /init_communicator/ first" in r.json()["detail"]
    r = post(server, "/update_named_param/", name="lm_head.weight", dtype="float32", shape=[2])
    assert r.status_code == 409
    assert requests.get(f"{server}/weights_version/").json() == {"weights_version": 0, "last_error": None}


def test_api_key_and_sigterm(tiny_model_dir, repo_env):
    repo_env["RCL_API_KEY"] = "s3cret"
    proc, url = start_server(tiny_model_dir, repo_env)
    try:
        assert requests.get(f"{url}/health/").status_code == 401
        r = requests.post(f"{url}/generate/", json={"prompts": ["x"]}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        ok = {"Authorization": "Bearer s3cret"}
        assert requests.get(f"{url}/health/", headers=ok).status_code == 200
        r = requests.post(f"{url}/generate/", json={"prompts": ["x"], "max_tokens": 2}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and len(r.json()["completion_ids"]) == 1
    finally:
        assert stop_server(proc) == 0


def test_openai_style_completions_match_generate(server, tokenizer):
    prompts = [[5, 17, 42, 9], [7, 8]]
    generated = post(server, "/generate/", prompts=prompts, n=2, temperature=0, max_tokens=6).json()
    model = requests.get(f"{server}/v1/models").json()["data"][0]["id"]
    r = post(server, "/v1/completions", model=model, prompt=prompts, n=2, temperature=0, max_tokens=6, logprobs=0,
             return_token_ids=True, return_tokens_as_token_ids=True)
    assert r.status_code == 200, r.text
    body = r.json()
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert [c["prompt_token_ids"] for c in choices] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert [c["token_ids"] for c in choices] == generated["completion_ids"]
    assert [c["finish_reason"] for c in choices] == generated["finish_reasons"]
    for choice, lps in zip(choices, generated["logprobs"]):
        assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in choice["token_ids"]]
        assert choice["logprobs"]["token_logprobs"] == pytest.approx([step[0] for step in lps], abs=1e-5)
        assert choice["text"] == tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
    assert body["usage"]["prompt_tokens"] == 6 and body["usage"]["completion_tokens"] == sum(
        len(c["token_ids"]) for c in choices)
    text = post(server, "/v1/completions", prompt="Hi", max_tokens=3, temperature=0).json()["choices"]
    assert len(text) == 1 and text[0]["logprobs"] is None and "token_ids" not in text[0]


def test_completions_answer_to_every_served_name_and_the_model_path(server, tiny_model_dir):
    names = [m["id"] for m in requests.get(f"{server}/v1/models").json()["data"]]
    assert names == ["tiny", "teacher", tiny_model_dir]
    for name in names:
        r = post(server, "/v1/completions", model=name, prompt="Hi", max_tokens=2, temperature=0)
        assert r.status_code == 200 and r.json()["model"] == "tiny", r.text
    r = post(server, "/v1/completions", model="tin", prompt="Hi", max_tokens=2)
    assert r.status_code == 404
    assert r.json()["detail"] == (f"model 'tin' is not served here; this server answers to 'tiny' or 'teacher' or "
                                  f"'{tiny_model_dir}' (`rcl serve --served-model-name` adds names)")


def test_generate_returns_the_completions_text_when_asked(server, tokenizer):
    r = post(server, "/generate/", prompts=["Hi", "Question: 1+2?"], n=2, max_tokens=5, temperature=0, return_text=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["completion_texts"] == [tokenizer.decode(ids, skip_special_tokens=True)
                                        for ids in body["completion_ids"]]
    assert post(server, "/generate/", prompts=["Hi"], max_tokens=2).json()["completion_texts"] is None


@pytest.mark.parametrize("body, status, words", [
    ({"model": "other", "prompt": "Hi"}, 404, "model 'other' is not served here"),
    ({"prompt": "Hi", "stream": True, "n": 99}, 422, "n=99 is more than the server limit 8"),
    ({"prompt": "Hi", "logprobs": 101}, 422, "logprobs=101 is more than the server limit 100"),
    ({"prompt": "Hi", "max_tokens": 0}, 422, "max_tokens=0 needs echo: true"),
    ({"prompt": "Hi", "prompt_logprobs": 101}, 422, "prompt_logprobs=101 is more than the server limit 100"),
    ({"prompt": "Hi", "echo": True, "logprobs": 101}, 422, "logprobs=101 is more than the server limit 100"),
    ({"prompt": "Hi", "n": 99}, 422, "n=99 is more than the server limit 8"),
    ({"prompt": []}, 422, "invalid request"),
    ({"prompt": "Hi", "suffix": "!", "response_format": {"type": "json_object"}}, 422,
     "unsupported fields ['response_format', 'suffix']"),
    ({"prompt": "Hi", "logit_bias": {"5": 101}}, 422, "logit_bias values must be in [-100, 100] (tokens [5])"),
    ({"prompt": "Hi", "logit_bias": {"100000": 1}}, 422, "logit_bias names token ids outside the vocabulary"),
    ({"prompt": "Hi", "presence_penalty": 2.5}, 422, "invalid request"),
    ({"prompt": "Hi", "prompt_logprobs": -1}, 422, "invalid request"),
    ({"prompt": "Hi", "structured_outputs": {"json": {}}}, 422, "unsupported fields ['structured_outputs']"),
    ({"prompt": "Hi", "include_stop_str_in_output": False}, 422, "unsupported fields ['include_stop_str_in_output']"),
])
def test_bad_completions_requests_are_4xx_with_a_message(server, body, status, words):
    r = post(server, "/v1/completions", **body)
    assert r.status_code == status and words in r.json()["detail"], r.text


USER = [{"role": "user", "content": "Hi"}]


class BosTokenizer:
    """A tokenizer whose special tokens are a BOS (id 1), as Llama's are; the tiny model's Qwen2 one adds none."""
    chat_template = "unused"

    def __len__(self):
        return 100

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1] * add_special_tokens + [ord(c) - 90 for c in text]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **options):
        assert tokenize is False
        return "".join(m["content"] for m in messages) + "a" * add_generation_prompt


@pytest.mark.parametrize("flag", [True, False])
def test_add_special_tokens_reaches_the_tokenizer_with_vllms_defaults(flag):
    tok = BosTokenizer()
    bos = [1] if flag else []
    completions = CompletionsRequest(prompt="ab", add_special_tokens=flag)
    assert _prompt_ids(completions.as_generate(), tok, ServerLimits()) == [bos + [7, 8]]
    assert _prompt_ids(CompletionsRequest(prompt="ab").as_generate(), tok, ServerLimits()) == [[1, 7, 8]]
    chat = ChatCompletionsRequest(messages=[{"role": "user", "content": "b"}], add_special_tokens=flag)
    assert chat_request_prompt_ids(chat, tok) == bos + [8, 7]
    assert chat_request_prompt_ids(ChatCompletionsRequest(messages=[{"role": "user", "content": "b"}]), tok) == [8, 7]


def test_null_fields_and_fields_sent_turned_off_are_taken_as_absent(server):
    """Clients that send every field (null, or a penalty at 0) get what a minimal body gets; a value that would
    change the completion is still refused."""
    def texts(route, **body):
        r = post(server, route, **body)
        assert r.status_code == 200, r.text
        return [c["text"] if "text" in c else c["message"]["content"] for c in r.json()["choices"]]

    turned_off = dict(frequency_penalty=0, presence_penalty=0.0, logit_bias={}, best_of=1, seed=None, stop=None,
                      top_p=None, user="someone", store=False, metadata={})
    assert texts("/v1/completions", prompt="Hi", max_tokens=4, temperature=0) == texts(
        "/v1/completions", prompt="Hi", max_tokens=4, temperature=0, n=None, logprobs=None, add_special_tokens=True,
        **turned_off)
    assert texts("/v1/chat/completions", messages=USER, max_tokens=4, temperature=0) == texts(
        "/v1/chat/completions", messages=USER, max_tokens=None, max_completion_tokens=4, temperature=0,
        parallel_tool_calls=True, tools=None, top_logprobs=None, add_special_tokens=False, echo=False, **turned_off)
    refused = [("/v1/completions", "use_beam_search", True), ("/v1/completions", "best_of", True),
               ("/v1/completions", "best_of", 2), ("/v1/chat/completions", "echo", True)]
    for route, field, value in refused:
        body = {"prompt": "Hi"} if route == "/v1/completions" else {"messages": USER}
        r = post(server, route, max_tokens=4, **body, **{field: value})
        assert r.status_code == 422 and f"unsupported fields ['{field}']" in r.json()["detail"], (route, r.text)


def test_trls_own_vllm_client_generates_against_rcl(server, monkeypatch):
    """TRL >= 1.16 speaks vLLM's OpenAI-style routes; its real client generates against an rcl server."""
    vllm_client = pytest.importorskip("trl.generation.vllm_client")
    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda *args, **kwargs: True)  # generation needs no vLLM
    client = vllm_client.VLLMClient(base_url=server, connection_timeout=10)
    prompts = [[5, 17, 42, 9], [7, 8]]
    out = client.generate(prompts, n=2, temperature=0.0, max_tokens=6)
    generated = post(server, "/generate/", prompts=prompts, n=2, temperature=0, max_tokens=6).json()
    assert out["prompt_ids"] == prompts
    assert out["completion_ids"] == generated["completion_ids"]
    assert [[step[0] for step in seq] for seq in out["logprob_token_ids"]] == generated["completion_ids"]


def chat_prompt_ids(tokenizer, messages, **options):
    text = tokenizer.apply_chat_template(messages, tokenize=False, **{"add_generation_prompt": True, **options})
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_trls_own_vllm_client_chats_against_rcl(server, tokenizer, monkeypatch):
    """TRL's GRPO sends conversational prompts through `VLLMClient.chat` (`/v1/chat/completions`): the server renders
    them with the tokenizer's chat template and generates what `/generate/` generates from those token ids."""
    vllm_client = pytest.importorskip("trl.generation.vllm_client")
    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda *args, **kwargs: True)
    client = vllm_client.VLLMClient(base_url=server, connection_timeout=10)
    conversations = [[{"role": "user", "content": "Question: 1+2?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    out = client.chat(conversations, n=2, temperature=0.0, max_tokens=6)
    prompts = [chat_prompt_ids(tokenizer, c) for c in conversations]
    generated = post(server, "/generate/", prompts=prompts, n=2, temperature=0, max_tokens=6).json()
    assert out["prompt_ids"] == prompts
    assert out["completion_ids"] == generated["completion_ids"]
    assert [[step[0] for step in seq] for seq in out["logprob_token_ids"]] == generated["completion_ids"]
    assert [step[0] for seq in out["logprobs"] for step in seq] == pytest.approx(
        [step[0] for seq in generated["logprobs"] for step in seq], abs=1e-5)
    # logprobs k: TRL reads the sampled token and the k most likely, sorted by descending log-prob
    for ranked in (client.generate(prompts, n=2, temperature=1.0, max_tokens=6, logprobs=2),
                   client.chat(conversations, n=2, temperature=1.0, max_tokens=6, logprobs=2)):
        for ids, seq_ids, seq_lps in zip(ranked["completion_ids"], ranked["logprob_token_ids"], ranked["logprobs"]):
            for token, step_ids, step_lps in zip(ids, seq_ids, seq_lps):
                assert token in step_ids and len(step_ids) in (2, 3) and step_lps == sorted(step_lps, reverse=True)


@pytest.fixture(scope="module")
def raw_logprobs(tiny_model_dir):
    """The served model's own raw log-softmax over a sequence: row p - 1 predicts token p."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()

    def of(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)

    return of


def test_trls_sequence_logprobs_are_the_models_own(server, raw_logprobs, monkeypatch):
    """TRL's `VLLMClient.get_sequence_logprobs` (a teacher scoring existing sequences, for distillation) reads
    `prompt_logprobs` from /v1/completions: they are the model's raw log-softmax, top-k by rank, plus the actual
    token's."""
    vllm_client = pytest.importorskip("trl.generation.vllm_client")
    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda *args, **kwargs: True)
    client = vllm_client.VLLMClient(base_url=server, connection_timeout=10)
    sequences, prompt_lengths, k = [[5, 17, 42, 9, 11, 3], [7, 8, 30, 31]], [3, 2], 4
    out = client.get_sequence_logprobs(sequences, prompt_lengths, top_logprobs=k)
    for i, (ids, start) in enumerate(zip(sequences, prompt_lengths)):
        logprobs = raw_logprobs(ids)
        top = torch.topk(logprobs[start - 1 :], k, dim=1)
        assert out["logprob_token_ids"][i] == top.indices.tolist()
        assert [v for row in out["logprobs"][i] for v in row] == pytest.approx(top.values.flatten().tolist(), abs=1e-4)
        actual = [logprobs[p - 1, ids[p]].item() for p in range(start, len(ids))]
        assert [step[0] for step in out["actual_logprobs"][i]] == pytest.approx(actual, abs=1e-4)
        assert out["actual_token_ids"][i] == [[t] for t in ids[start:]]
    raw = post(server, "/v1/completions", prompt=[sequences[1]], max_tokens=1, prompt_logprobs=0).json()
    (choice,) = raw["choices"]
    assert choice["prompt_logprobs"][0] is None and len(choice["prompt_logprobs"]) == len(sequences[1])
    assert [list(step) for step in choice["prompt_logprobs"][1:]] == [[str(t)] for t in sequences[1][1:]]
    logprobs = raw_logprobs(sequences[1])
    ranks = [int((logprobs[p - 1] > logprobs[p - 1, t]).sum()) + 1 for p, t in enumerate(sequences[1]) if p]
    assert [step[str(t)]["rank"] for step, t in zip(choice["prompt_logprobs"][1:], sequences[1][1:])] == ranks


def test_tokenize_and_detokenize_as_vllm_answers_them(server, tokenizer):
    text = "Question: 1+2?"
    r = post(server, "/tokenize", model="tiny", prompt=text, return_token_strs=True).json()
    assert r["tokens"] == tokenizer(text)["input_ids"] and r["count"] == len(r["tokens"])
    assert r["token_strs"] == tokenizer.convert_ids_to_tokens(r["tokens"])
    chat = post(server, "/tokenize", messages=USER).json()
    assert chat["tokens"] == chat_prompt_ids(tokenizer, USER) and chat["token_strs"] is None
    assert post(server, "/detokenize", tokens=r["tokens"]).json() == {"prompt": tokenizer.decode(r["tokens"])}
    for path, body, status, words in [
            ("/tokenize", {"prompt": text, "model": "other"}, 404, "model 'other' is not served here"),
            ("/tokenize", {}, 422, "invalid request"),
            ("/detokenize", {"tokens": [10**6]}, 422, "token ids outside the vocabulary")]:
        bad = post(server, path, **body)
        assert bad.status_code == status and words in bad.json()["detail"], bad.text


def test_echo_scores_the_prompt_as_lm_eval_asks(server, tokenizer, raw_logprobs):
    """lm-eval's loglikelihood request: echo, logprobs 1, max_tokens 0 or 1, temperature 0. The echoed log-probs are
    the model's raw ones for every token after the first, with the top-k alternatives and the actual token."""
    text = "Question: 1+2?"
    ids = tokenizer(text)["input_ids"]
    logprobs = raw_logprobs(ids)
    scored = post(server, "/v1/completions", prompt=text, echo=True, logprobs=1, max_tokens=0, temperature=0).json()
    (choice,) = scored["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == text and lp["tokens"] == [tokenizer.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    actual = [logprobs[p - 1, ids[p]].item() for p in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(actual, abs=1e-4)
    best = logprobs.argmax(dim=1).tolist()
    for p in range(1, len(ids)):  # the top-1 alternative, plus the actual token when it is not the top one
        expected = {tokenizer.decode([best[p - 1]]), tokenizer.decode([ids[p]])}
        assert set(lp["top_logprobs"][p]) == expected
        assert max(lp["top_logprobs"][p].values()) == pytest.approx(logprobs[p - 1].max().item(), abs=1e-4)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert scored["usage"]["completion_tokens"] == 0
    # with a generated token: the prompt and the completion, scored together
    grown = post(server, "/v1/completions", prompt=[ids], echo=True, logprobs=0, max_tokens=2, temperature=0).json()
    (choice,) = grown["choices"]
    generated = post(server, "/generate/", prompts=[ids], max_tokens=2, temperature=0).json()["completion_ids"][0]
    assert len(choice["logprobs"]["tokens"]) == len(ids) + len(generated)
    assert choice["text"] == tokenizer.decode(ids) + tokenizer.decode(generated, skip_special_tokens=True)
    plain = post(server, "/v1/completions", prompt=[ids], echo=True, max_tokens=1, temperature=0).json()
    assert plain["choices"][0]["logprobs"] is None and plain["choices"][0]["text"].startswith(tokenizer.decode(ids))


def test_the_openai_sdk_chats_and_completes_against_rcl(server, tokenizer):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Question:"}, {"type": "text", "text": "2+2?"}]}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=5, temperature=0,
                                          logprobs=True)
    ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": "Question:\n2+2?"}])  # text parts joined as vLLM does
    expected = post(server, "/generate/", prompts=[ids], temperature=0, max_tokens=5, return_text=True).json()
    (choice,) = chat.choices
    assert (choice.message.role, choice.message.content) == ("assistant", expected["completion_texts"][0])
    assert choice.finish_reason == expected["finish_reasons"][0]
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx([s[0] for s in expected["logprobs"][0]],
                                                                         abs=1e-5)
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (len(ids), len(expected["completion_ids"][0]))
    # without a length the completion may run to the server's --max-tokens (64), as vLLM's runs to its context
    assert client.chat.completions.create(model="tiny", messages=messages, temperature=0).usage.completion_tokens <= 64
    text = client.completions.create(model="teacher", prompt="Hi", max_tokens=4, temperature=0)
    assert text.choices[0].text == post(server, "/generate/", prompts=["Hi"], temperature=0, max_tokens=4,
                                        return_text=True).json()["completion_texts"][0]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="tiny", messages=messages, response_format={"type": "json_object"})
    assert "unsupported fields ['response_format']" in refused.value.response.json()["detail"]
    ranked = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, temperature=0,
                                            logprobs=True, top_logprobs=3).choices[0].logprobs.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in ranked)
    plain_text = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                response_format={"type": "text"})
    assert plain_text.choices[0].message.content == choice.message.content
    models = client.models.list().data
    assert models[0].id == "tiny" and all(isinstance(m.created, int) for m in models)


def events(response):
    """The JSON chunks of a server-sent-event answer, checking that it ends with `data: [DONE]`."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_streamed_completions_carry_the_same_choices_and_usage(server):
    body = dict(prompt=["Hi", "Question: 1+2?"], n=2, max_tokens=5, temperature=1.0, seed=3, logprobs=0,
                return_token_ids=True)
    whole = post(server, "/v1/completions", **body).json()
    streamed = events(post(server, "/v1/completions", **body, stream=True,
                           stream_options={"include_usage": True}))
    *chunks, last = streamed
    assert [c["choices"] for c in chunks] == [[choice] for choice in whole["choices"]]
    assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert len({c["id"] for c in streamed}) == 1 and last["choices"] == [] and last["usage"] == whole["usage"]
    # vLLM's continuous usage: each chunk counts the completion tokens sent so far
    running = events(post(server, "/v1/completions", **body, stream=True,
                          stream_options={"include_usage": True, "continuous_usage_stats": True}))
    sent = list(accumulate(len(choice["token_ids"]) for choice in whole["choices"]))
    assert [c["usage"]["completion_tokens"] for c in running[:-1]] == sent
    assert running[-1]["usage"] == whole["usage"] and sent[-1] == whole["usage"]["completion_tokens"]
    # no stream_options: no usage anywhere; stream_options without stream change nothing
    plain = events(post(server, "/v1/completions", **body, stream=True))
    assert [c["choices"] for c in plain] == [[choice] for choice in whole["choices"]]
    assert all("usage" not in c for c in plain)
    unstreamed = post(server, "/v1/completions", **body, stream_options={"include_usage": True}).json()
    assert unstreamed["choices"] == whole["choices"]


def test_a_streamed_chat_is_a_delta_then_a_finish_per_choice(server):
    body = dict(messages=USER, n=2, max_tokens=5, temperature=1.0, seed=4, logprobs=True, return_token_ids=True)
    whole = post(server, "/v1/chat/completions", **body).json()
    chunks = events(post(server, "/v1/chat/completions", **body, stream=True))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    assert all("prompt_token_ids" not in c for c in chunks[1:])
    parts = [c["choices"][0] for c in chunks]
    assert len(parts) == 4
    for choice, delta, end in zip(whole["choices"], parts[0::2], parts[1::2]):
        assert delta == {"index": choice["index"], "delta": choice["message"], "logprobs": choice["logprobs"],
                         "finish_reason": None, "token_ids": choice["token_ids"]}
        assert end == {"index": choice["index"], "delta": {}, "logprobs": None,
                       "finish_reason": choice["finish_reason"]}


def test_the_openai_sdk_streams_chats_and_completions(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    whole = client.chat.completions.create(model="tiny", messages=USER, max_tokens=6, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=USER, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = client.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0)
    pieces = list(client.completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == text.choices[0].text


def test_sampled_tokens_come_with_their_samplers_most_likely_alternatives(server):
    """logprobs k on /v1/completions and top_logprobs k on /v1/chat/completions, as vLLM shapes them: greedy, the
    sampled token is the most likely, with its own log-prob; sampled, it is listed beside the k most likely."""
    greedy = post(server, "/v1/completions", prompt="Question: 1+2?", max_tokens=5, temperature=0, logprobs=3,
                  return_tokens_as_token_ids=True).json()["choices"][0]["logprobs"]
    for token, logprob, alternatives in zip(greedy["tokens"], greedy["token_logprobs"], greedy["top_logprobs"]):
        assert len(alternatives) == 3 and max(alternatives, key=alternatives.get) == token
        assert alternatives[token] == pytest.approx(logprob) and all(lp <= logprob for lp in alternatives.values())
    sampled = post(server, "/v1/completions", prompt="Hi", max_tokens=8, temperature=1.0, seed=2, n=4, logprobs=1,
                   return_tokens_as_token_ids=True).json()
    for choice in sampled["choices"]:
        lp = choice["logprobs"]
        for token, logprob, alternatives in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            assert token in alternatives and alternatives[token] == logprob and len(alternatives) in (1, 2)
    chat = post(server, "/v1/chat/completions", messages=USER, max_tokens=5, temperature=0, logprobs=True,
                top_logprobs=2).json()["choices"][0]["logprobs"]["content"]
    for entry in chat:
        top = entry["top_logprobs"]
        assert len(top) == 2 and top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"]
        assert top[1]["logprob"] <= top[0]["logprob"] and top[1]["bytes"] == list(top[1]["token"].encode())
    plain = post(server, "/v1/chat/completions", messages=USER, max_tokens=3, logprobs=True).json()
    assert all(entry["top_logprobs"] == [] for entry in plain["choices"][0]["logprobs"]["content"])


def test_logit_bias_and_openai_penalties_change_what_is_sampled(server):
    """A +100 bias makes a token certain; a -100 bias on the greedy choice moves greedy to the next one; large
    presence and frequency penalties make a greedy completion that repeats itself use more distinct tokens (the
    exact maths: tests/test_engines.py)."""
    base = dict(prompt=[5, 17, 42, 9], temperature=0, max_tokens=6, return_token_ids=True)
    greedy = post(server, "/v1/completions", **base).json()["choices"][0]["token_ids"]
    forced = post(server, "/v1/completions", **{**base, "temperature": 1.0, "seed": 3},
                  logit_bias={"77": 100}).json()["choices"][0]
    assert forced["token_ids"] == [77] * 6
    avoided = post(server, "/v1/completions", **base, logit_bias={str(greedy[0]): -100}, logprobs=1,
                   return_tokens_as_token_ids=True).json()["choices"][0]
    assert avoided["token_ids"][0] != greedy[0]
    assert f"token_id:{greedy[0]}" not in avoided["logprobs"]["top_logprobs"][0]
    # a token the completion holds again and again under greedy, then never twice under the presence penalty
    looping = post(server, "/v1/completions", **{**base, "max_tokens": 24}).json()["choices"][0]["token_ids"]
    assert len(set(looping)) < len(looping)
    penalised = post(server, "/v1/completions", **{**base, "max_tokens": 24}, presence_penalty=2.0,
                     frequency_penalty=2.0, logit_bias={}).json()["choices"][0]["token_ids"]
    assert len(set(penalised)) > len(set(looping))
    chat = post(server, "/v1/chat/completions", messages=USER, max_tokens=4, temperature=0, return_token_ids=True,
                logit_bias={"77": 100}).json()
    assert chat["choices"][0]["token_ids"] == [77] * 4


def test_ignore_eos_and_min_tokens_decide_where_a_completion_may_end(server, tokenizer):
    eos = tokenizer.eos_token_id
    body = dict(prompt=[5, 17, 42, 9], max_tokens=6, temperature=1.0, seed=0, return_token_ids=True,
                logit_bias={str(eos): 100})  # eos is all but certain at every step
    (ends,) = post(server, "/v1/completions", **body).json()["choices"]
    assert ends["token_ids"] == [eos] and ends["finish_reason"] == "stop"
    (runs_on,) = post(server, "/v1/completions", **body, ignore_eos=True).json()["choices"]
    assert runs_on["token_ids"] == [eos] * 6 and runs_on["finish_reason"] == "length"
    (later,) = post(server, "/v1/chat/completions", messages=USER, **{k: v for k, v in body.items() if k != "prompt"},
                    min_tokens=3).json()["choices"]
    assert len(later["token_ids"]) == 4 and later["token_ids"][-1] == eos and eos not in later["token_ids"][:3]
    assert later["finish_reason"] == "stop"


def test_chat_completions_render_the_requests_template_tools_and_continuation(server, tokenizer):
    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if tools %}[{{ tools[0].function.name }}]{% endif %}{% if add_generation_prompt %}<a>{% endif %}")
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
    r = post(server, "/v1/chat/completions", messages=[{"role": "user", "content": "1+1"}], chat_template=template,
             tools=tools, tool_choice="none", max_tokens=2, return_token_ids=True)
    assert r.status_code == 200, r.text
    assert r.json()["prompt_token_ids"] == tokenizer("<user>1+1[add]<a>", add_special_tokens=False)["input_ids"]
    # continue_final_message: the prompt ends inside the assistant's turn, with no end-of-turn token after it
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer is"}]
    r = post(server, "/v1/chat/completions", messages=messages, add_generation_prompt=False,
             continue_final_message=True, max_tokens=2, return_token_ids=True, temperature=0)
    assert r.status_code == 200, r.text
    ids = chat_prompt_ids(tokenizer, messages, add_generation_prompt=False, continue_final_message=True)
    assert r.json()["prompt_token_ids"] == ids
    assert tokenizer.decode(ids).endswith("The answer is")
    assert r.json()["choices"][0]["token_ids"] == post(server, "/generate/", prompts=[ids], temperature=0,
                                                       max_tokens=2).json()["completion_ids"][0]


@pytest.mark.parametrize("body, status, words", [
    ({"messages": []}, 422, "invalid request"),
    ({"messages": USER, "model": "other"}, 404, "model 'other' is not served here"),
    ({"messages": USER, "stream": True, "best_of": 2}, 422, "unsupported fields ['best_of']"),
    ({"messages": USER, "top_logprobs": 2}, 422, "top_logprobs=2 needs logprobs: true"),
    ({"messages": USER, "top_logprobs": 101, "logprobs": True}, 422,
     "top_logprobs=101 is more than the server limit 100"),
    ({"messages": USER, "min_tokens": 5, "max_tokens": 3}, 422, "min_tokens=5 is more than max_tokens=3"),
    ({"messages": USER, "n": 99}, 422, "n=99 is more than the server limit 8"),
    ({"messages": USER, "max_completion_tokens": 65}, 422, "max_tokens=65 is more than the server limit 64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}, 422,
     "content parts of type ['image_url'] are not supported"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, 422,
     "tool_choice None needs tool-call parsing"),
    ({"messages": USER, "add_generation_prompt": True, "continue_final_message": True}, 422, "cannot both be true"),
    ({"messages": USER, "chat_template": "{{ messages | no_such_filter }}"}, 400,
     "the chat template could not render these messages"),
])
def test_bad_chat_completions_requests_are_4xx_with_a_message(server, body, status, words):
    r = post(server, "/v1/chat/completions", **body)
    assert r.status_code == status and words in r.json()["detail"], r.text


@pytest.fixture(scope="module")
def small_body_server(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, server_env(), "--max-body-mb", "0.01")  # 10,485 bytes
    yield url
    stop_server(proc)


def chunks(total: int, size: int = 1024):
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


@pytest.mark.parametrize("path", ["/generate/", "/update_weights/?update_id=x&bucket=0&last=true"])
def test_body_size_limit_holds_with_and_without_content_length(small_body_server, path):
    url = f"{small_body_server}{path}"
    declared = requests.post(url, data=b" " * 20_000, timeout=30)
    assert declared.status_code == 413 and "larger than the limit 10485" in declared.json()["detail"]
    chunked = requests.post(url, data=chunks(200_000), headers={"Content-Type": "application/json"}, timeout=30)
    assert chunked.status_code == 413, chunked.text
    assert "larger than the limit 10485" in chunked.json()["detail"]
    # a body under the limit is read and judged on its content
    ok = requests.post(f"{small_body_server}/generate/", data=b'{"prompts": ["Hi"], '
                       b'"max_tokens": 2}', headers={"Content-Type": "application/json"}, timeout=30)
    assert ok.status_code == 200, ok.text
    small_chunked = requests.post(f"{small_body_server}/generate/",
                                  data=iter([b'{"prompts": ["Hi"], ', b'"max_tokens": 2}']),
                                  headers={"Content-Type": "application/json"}, timeout=30)
    assert small_chunked.status_code == 200, small_chunked.text


def test_a_request_chat_template_needs_the_servers_trust(small_body_server, server):
    """As vLLM: a template is code the server runs, so a request may bring one only to a server started with
    --trust-request-chat-template (`server` is; `small_body_server` is not). The tokenizer's own template is fine."""
    own = {"messages": USER, "max_tokens": 2}
    assert post(small_body_server, "/v1/chat/completions", **own).status_code == 200
    for extra in ({"chat_template": "{{ messages[0].content }}"},
                  {"chat_template_kwargs": {"chat_template": "{{ messages[0].content }}"}}):
        refused = post(small_body_server, "/v1/chat/completions", **own, **extra)
        assert refused.status_code == 400 and "--trust-request-chat-template" in refused.json()["detail"]
        assert post(server, "/v1/chat/completions", **own, **extra).status_code == 200


def test_serving_without_an_api_key_warns_about_weight_pushes():
    from rcl.serving.server import security_warnings

    assert security_warnings("127.0.0.1", "secret") == []
    (local,) = security_warnings("127.0.0.1", None)
    assert "any local user can push weights" in local and "--api-key" in local
    (remote,) = security_warnings("0.0.0.0", None)
    assert "anyone who can reach 0.0.0.0" in remote
