"""Pulling the answer out of a completion: reasoning removed, the `<answer>` section, fenced code, tagged blocks."""

from __future__ import annotations

import re
from typing import Callable

_REASONING_TAGS = ("think", "thinking", "reasoning")
_FENCE_RE = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)```", re.DOTALL)


def strip_reasoning(text: str) -> str:
    """The text without <think>/<thinking>/<reasoning> blocks; an unclosed one hides everything after it (a
    truncated thought is not an answer), and a closing tag that nothing opened hides everything before it (the chat
    template opened the thought in the prompt, as Qwen3's and DeepSeek-R1's do)."""
    for tag in _REASONING_TAGS:
        text = re.sub(rf"<{tag}>.*?</{tag}>", "", text, flags=re.DOTALL | re.IGNORECASE)
        text = re.split(rf"<{tag}>", text, flags=re.IGNORECASE)[0]
        text = re.split(rf"</{tag}>", text, flags=re.IGNORECASE)[-1]
    return text


def last_tagged(text: str, tag: str) -> str | None:
    """Content of the last <tag>...</tag> (case-insensitive), or of a final unclosed <tag>; None if absent."""
    closed = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL | re.IGNORECASE)
    opened = [m.end() for m in re.finditer(rf"<{tag}>", text, flags=re.IGNORECASE)]
    if not opened:
        return None
    tail = text[opened[-1] :]
    if re.search(rf"</{tag}>", tail, flags=re.IGNORECASE) is None:
        return tail
    return closed[-1] if closed else None


def answer_text(completion: str) -> str:
    """What the answer is read from: the last <answer> section if there is one, else the text, reasoning removed."""
    text = strip_reasoning(completion)
    section = last_tagged(text, "answer")
    return text if section is None else section


def fenced_body(text: str) -> str | None:
    """The body of `text` when all of it is one fenced block (blank space around it aside), else None."""
    match = _FENCE_RE.fullmatch(text.strip())
    return match.group(2) if match else None


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) for each ``` block, plus a final unclosed one (a truncated completion)."""
    blocks = [(info.strip().split(" ")[0].lower() if info.strip() else "", body) for info, body in
              _FENCE_RE.findall(text)]
    consumed = _FENCE_RE.sub("", text)
    unclosed = re.search(r"```[ \t]*([^\n`]*)\n(.*)$", consumed, flags=re.DOTALL)
    if unclosed:
        info = unclosed.group(1).strip()
        blocks.append((info.split(" ")[0].lower() if info else "", unclosed.group(2)))
    return blocks


def extract_code(completion: str, fence_tags: list[str] | tuple[str, ...] = ("python", "py"),
                 prefer: Callable[[str], bool] | None = None) -> str:
    """The program in a completion: in the answer text (see `answer_text`), the last fenced block tagged with the
    language, else the last untagged block, else the last block of any tag, else the whole answer text.

    `prefer` (a test on a block: "defines the function under test") picks, first, the last block that passes it, in
    the same order of tags: a solution followed by an "example usage" block is the solution."""
    text = answer_text(completion)
    blocks = _fenced_blocks(text)
    tags = {tag.lower() for tag in fence_tags}
    tiers = [[body for tag, body in blocks if wanted(tag)]
             for wanted in (lambda tag: tag in tags, lambda tag: tag == "", lambda tag: True)]
    if prefer is not None:
        for chosen in tiers:
            preferred = [body for body in chosen if prefer(body)]
            if preferred:
                return preferred[-1].strip("\n") + "\n"
    for chosen in tiers:
        if chosen:
            return chosen[-1].strip("\n") + "\n"
    return text.strip("\n") + "\n" if text.strip() else ""
