"""Tool calls read out of chat completions (`rcl.serving.tool_calls`), and served as OpenAI's `tool_calls`."""

import asyncio
import json

import httpx
import pytest

from rcl.engines import Completion
from rcl.serving.tool_calls import TOOL_PARSERS, arguments_as_objects, parse_hermes

ADD = '{"name": "add", "arguments": {"a": 1, "b": 2}}'


def test_hermes_reads_each_call_and_keeps_the_rest_as_content():
    parsed = parse_hermes(f"I will add them.\n<tool_call>\n{ADD}\n</tool_call>")
    assert parsed.content == "I will add them."
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("add", {"a": 1, "b": 2})]
    two = parse_hermes(f'<tool_call>{ADD}</tool_call>\n<tool_call>{{"name": "now", "arguments": {{}}}}</tool_call>')
    assert two.content is None and [c.name for c in two.calls] == ["add", "now"]
    # a last call whose closing tag was cut off, arguments sent as JSON text, and non-ASCII arguments
    cut = parse_hermes('<tool_call>{"name": "say", "arguments": "{\\"text\\": \\"héllo\\"}"}')
    assert [(c.name, c.arguments) for c in cut.calls] == [("say", '{"text": "héllo"}')]
    assert TOOL_PARSERS["hermes"] is parse_hermes


@pytest.mark.parametrize("text", [
    "The answer is 3.",
    "<tool_call>{not json}</tool_call>",
    '<tool_call>{"arguments": {}}</tool_call>',  # no name
    f'<tool_call>{ADD}</tool_call><tool_call>["a list"]</tool_call>',  # one bad call: all stays text
    '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',
])
def test_text_that_is_not_well_formed_calls_stays_content(text):
    parsed = parse_hermes(text)
    assert parsed.content == text and parsed.calls == []


def test_earlier_calls_arguments_are_objects_for_the_template():
    message = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}},
                              {"id": "2", "type": "function", "function": {"name": "odd", "arguments": "not json"}}]}
    read = arguments_as_objects(message)
    assert [c["function"]["arguments"] for c in read["tool_calls"]] == [{"a": 1}, "not json"]
    assert message["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'  # the request is not changed
    assert arguments_as_objects({"role": "user", "content": "hi"}) == {"role": "user", "content": "hi"}


class CannedBackend:
    """A backend whose every completion is `text`, over the tiny model's tokenizer."""

    world_size = 1
    group_kinds = ("gloo",)

    def __init__(self, tokenizer, text: str):
        self.tokenizer, self.text = tokenizer, text

    def generate(self, prompts, params):
        ids = self.tokenizer(self.text, add_special_tokens=False)["input_ids"]
        return [[Completion(ids, None, "stop", self.text) for _ in range(params.n)] for _ in prompts]


TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]


def serve(tiny_model_dir, text, **options):
    from transformers import AutoTokenizer

    from rcl.serving.server import create_app

    return create_app(CannedBackend(AutoTokenizer.from_pretrained(tiny_model_dir), text), model_name="tiny",
                      **options)


def run_openai(app, scenario):
    openai = pytest.importorskip("openai")

    async def main():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rcl/v1")
        async with openai.AsyncOpenAI(base_url="http://rcl/v1", api_key="unused", http_client=http,
                                      max_retries=0) as client:
            return await scenario(client)

    try:
        return asyncio.run(main())
    finally:
        app.state.worker.shutdown()


def test_the_openai_sdk_gets_tool_calls_whole_and_streamed(tiny_model_dir):
    app = serve(tiny_model_dir, f"Adding.\n<tool_call>\n{ADD}\n</tool_call>", tool_call_parser="hermes")
    messages = [{"role": "user", "content": "What is 1 + 2?"}]

    async def scenario(client):
        whole = await client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=8)
        stream = await client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=8,
                                                      stream=True)
        chunks = [chunk async for chunk in stream]
        plain = await client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=8,
                                                     tool_choice="none")
        return whole, chunks, plain

    whole, chunks, plain = run_openai(app, scenario)
    (choice,) = whole.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Adding."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "add" and json.loads(call.function.arguments) == {
        "a": 1, "b": 2} and call.id.startswith("chatcmpl-tool-")
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert [(t.index, t.function.name) for d in deltas for t in d.tool_calls] == [(0, "add")]
    assert [c.choices[0].finish_reason for c in chunks][-1] == "tool_calls"
    # tool_choice none: the calls stay in the text
    assert plain.choices[0].message.tool_calls is None and "<tool_call>" in plain.choices[0].message.content
    assert plain.choices[0].finish_reason == "stop"


def test_tool_choice_needs_a_parser_and_a_conversation_with_calls_renders(tiny_model_dir):
    template = ("{% for m in messages %}[{{ m.role }}]{% if m.tool_calls %}{{ m.tool_calls[0].function.name }}"
                "({{ m.tool_calls[0].function.arguments.a }}){% endif %}{{ m.content or '' }}{% endfor %}")
    earlier = [{"role": "user", "content": "1+2?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "3"}]

    async def scenario(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rcl") as client:
            return [await client.post(path, json=body) for path, body in [
                ("/v1/chat/completions", {"messages": earlier[:1], "tools": TOOLS}),
                ("/v1/chat/completions", {"messages": earlier[:1], "tools": TOOLS, "tool_choice": "required"}),
                ("/tokenize", {"messages": earlier, "chat_template": template, "add_generation_prompt": False})]]

    for parser in (None, "hermes"):
        app = serve(tiny_model_dir, "3", tool_call_parser=parser, trust_request_chat_template=True)
        auto, required, rendered = asyncio.run(scenario(app))
        app.state.worker.shutdown()
        if parser is None:
            assert auto.status_code == 422 and "--tool-call-parser hermes" in auto.json()["detail"]
        else:  # no call in the text: a plain answer
            assert auto.status_code == 200 and auto.json()["choices"][0]["message"] == {"role": "assistant",
                                                                                        "content": "3"}
        assert required.status_code == 422 and "needs constrained decoding" in required.json()["detail"]
        # the earlier call's JSON-text arguments reach the template as an object (`arguments.a` is 1)
        tokenizer = app.state.backend.tokenizer
        assert tokenizer.decode(rendered.json()["tokens"]) == "[user]1+2?[assistant]add(1)[tool]3"
