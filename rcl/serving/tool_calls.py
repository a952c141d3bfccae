"""Tool calls read out of a chat completion's text, for `tool_choice: "auto"` (`rcl serve --tool-call-parser`).

A parser takes the completion's text and gives the message content left over and the calls, each a function name
and its arguments as a JSON string, as OpenAI's `tool_calls` carry them. Text that does not parse as calls stays
content, with no calls (as vLLM's parsers do), so a malformed call reaches the client as text instead of vanishing.

Register a parser with `@register_tool_parser("name")`; `TOOL_PARSERS` holds them.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

ToolParser = Callable[[str], "ParsedTools"]
TOOL_PARSERS: dict[str, ToolParser] = {}


@dataclass
class ToolCall:
    name: str
    arguments: str
    """A JSON object, as text."""

    def as_openai(self, index: int | None = None) -> dict[str, Any]:
        call = {"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


@dataclass
class ParsedTools:
    content: str | None
    """The text outside the calls (None when nothing else was written)."""
    calls: list[ToolCall]


def register_tool_parser(name: str) -> Callable[[ToolParser], ToolParser]:
    def add(parser: ToolParser) -> ToolParser:
        TOOL_PARSERS[name] = parser
        return parser

    return add


def _call_from_json(body: str) -> ToolCall | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"], json.dumps(arguments, ensure_ascii=False))


HERMES_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)


@register_tool_parser("hermes")
def parse_hermes(text: str) -> ParsedTools:
    """Hermes-style calls, as Qwen2.5, Qwen3 and Hermes chat templates ask for them: each
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; a last call cut off before its closing tag counts."""
    matches = list(HERMES_CALL.finditer(text))
    calls = [_call_from_json((m.group(1) if m.group(1) is not None else m.group(2)).strip()) for m in matches]
    if not calls or any(call is None for call in calls):
        return ParsedTools(text, [])
    content = HERMES_CALL.sub("", text).strip()
    return ParsedTools(content or None, [call for call in calls if call is not None])


def arguments_as_objects(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message's earlier tool calls with their JSON-text arguments read back into objects, which chat
    templates render (vLLM does the same before rendering); arguments that are not JSON stay as they are."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    read = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                function = {**function, "arguments": json.loads(function["arguments"])}
            except json.JSONDecodeError:
                pass
            call = {**call, "function": function}
        read.append(call)
    return {**message, "tool_calls": read}
