"""Pulling the answer out of a completion: reasoning removed, the `<answer>` section, fenced code, tagged blocks."""

from __future__ import annotations

import re
from typing import Callable

_REASONING_TAGS = ("think", "thinking", "reasoning")
_OPENING_FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([^\n]*?)[ \t]*$")
_FENCE_AFTER_TEXT = re.compile(r"^([^`]*?[^`\s][^`]*?)(`{3,})[ \t]*([^`\n]*?)[ \t]*$")  # "Code: ```python"


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
    lines = text.strip().split("\n")
    blocks = _fenced_blocks("\n".join(lines))
    if len(blocks) != 1 or not lines[0].startswith(("```", "~~~")):
        return None
    tag, body, end = blocks[0]
    return body if end == len(lines) else None


def _fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language tag, body, the line after the block) of each fenced block, as Markdown reads them, plus a final
    unclosed one (a truncated completion).

    A fence is three or more backticks or tildes; it is closed by a line of the same character, at least as long,
    so a ```` fence may hold ``` lines. A body loses the indentation its opening fence had (models indent fences
    inside numbered steps). Leniently, as small models write them, a backtick fence may also open after text on its
    line (`Code: ```python`) and close at the end of a line (`return x```) or at the start of one (``` then text,
    which is read on for a next block)."""
    lines = text.split("\n")  # a list the scan may shorten in place (the text after a closing fence)
    blocks, i = [], 0
    while i < len(lines):
        opening = _OPENING_FENCE.match(lines[i])
        if opening and opening.group(2)[0] == "`" and "`" in opening.group(3):  # inline code, not a fence
            opening = None
        after_text = None if opening else _FENCE_AFTER_TEXT.match(lines[i])
        if not opening and not after_text:
            i += 1
            continue
        indent, fence, info = opening.groups() if opening else ("", *after_text.groups()[1:])
        body, j, closed = [], i + 1, False
        while j < len(lines):
            line = lines[j]
            stripped = line.rstrip()
            if stripped.lstrip() and set(stripped.lstrip()) == {fence[0]} and len(stripped.lstrip()) >= len(fence):
                closed = True
                break
            if fence[0] == "`" and stripped.endswith(fence) and not stripped.endswith(fence + "`"):
                body.append(stripped[: -len(fence)])
                closed = True
                break
            if fence[0] == "`" and line.lstrip().startswith(fence) and not line.lstrip().startswith(fence + "`"):
                lines[j] = line.lstrip()[len(fence) :]  # "``` and then ```python": the rest may open a block
                closed = True
                j -= 1
                break
            body.append(line)
            j += 1
        width = len(indent.expandtabs(4))
        body = [_dedent(line, width) for line in body]
        tag = info.split()[0].lower() if info.split() else ""
        blocks.append((tag, "\n".join(body) + ("\n" if body else ""), j + 1 if closed else j))
        i = j + 1
    return blocks


def _dedent(line: str, width: int) -> str:
    """`line` without up to `width` columns of leading blank space."""
    removed = 0
    while removed < width and line[:1] in (" ", "\t"):
        removed += 4 if line[0] == "\t" else 1
        line = line[1:]
    return line


def extract_code(completion: str, fence_tags: list[str] | tuple[str, ...] = ("python", "py"),
                 prefer: Callable[[str], bool] | None = None) -> str:
    """The program in a completion: in the answer text (see `answer_text`), the last fenced block tagged with the
    language, else the last untagged block, else the last block of any tag, else the whole answer text.

    `prefer` (a test on a block: "defines the function under test") picks, first, the last block that passes it, in
    the same order of tags: a solution followed by an "example usage" block is the solution."""
    text = answer_text(completion)
    blocks = _fenced_blocks(text)
    tags = {tag.lower() for tag in fence_tags}
    tiers = [[body for tag, body, _ in blocks if wanted(tag)]
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
