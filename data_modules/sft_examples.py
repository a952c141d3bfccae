"""SFT examples: (prompt, completion) text pairs per schema, tokenized with completion-only labels, and collation.

Every prompt is rendered by the one prompt builder (`rcl.prompts`), so SFT trains on exactly the prompts that RL and
evaluation sample from. Labels are -100 on prompt positions: the loss covers the completion (and its eos) only.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal, Sequence

import torch

from data_modules.sources import DataError
from rcl.prompts import PromptTemplates, render_prompt, student_messages, teacher_messages, teacher_target

IGNORE_INDEX = -100
StudentExample = Literal["baseline", "with_teaching", "probe"]


def in_share(key: str, share: float) -> bool:
    """Whether `key` is in a fixed `share` of all keys: by its crc32, which (unlike `hash`) is the same in every
    process and on every machine."""
    return zlib.crc32(key.encode()) < share * 2**32


def atlas_sft_pair(tokenizer: Any, templates: PromptTemplates, row: dict) -> tuple[str, str]:
    """Teacher example: question + student's approach -> `<thinking>diagnosis</thinking><teaching>...</teaching>`."""
    prompt = render_prompt(tokenizer, teacher_messages(templates, row["problem_text"], row["student_approach"]))
    return prompt, teacher_target(row["teacher_diagnosis"], row["teacher_teaching"]) + tokenizer.eos_token


def generic_pairs(
    tokenizer: Any, templates: PromptTemplates, row: dict, kinds: Sequence[StudentExample]
) -> list[tuple[str, str]]:
    """Student examples of one generic row. The solution is the target as written: a solution without `<solution>`
    tags stays untagged even when an `answer` column exists (rewriting it would invent text the data never had).
    A `reasoning_trace` is put before the solution. Rows without teaching/approach skip those kinds."""
    solution = row["solution"]
    if row.get("reasoning_trace"):
        solution = f"{row['reasoning_trace'].strip()}\n{solution}"
    pairs = []
    for kind in kinds:
        if kind == "baseline":
            messages, target = student_messages(templates, "baseline", row["question"]), solution
        elif kind == "with_teaching":
            if row.get("teaching") is None:
                continue
            messages = student_messages(templates, "with_teaching", row["question"], row["teaching"])
            target = solution
        else:
            if row.get("approach") is None:
                continue
            messages, target = student_messages(templates, "probe", row["question"]), row["approach"]
        pairs.append((render_prompt(tokenizer, messages), target + tokenizer.eos_token))
    return pairs


def messages_pair(tokenizer: Any, row: dict, index: int) -> tuple[str, str]:
    """Chat example: every turn before the last is the prompt, the last (assistant) turn is the completion."""
    messages = row["messages"]
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise DataError(f"column 'messages' row {index}: the last of at least two turns must be the assistant's")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return prompt, messages[-1]["content"] + tokenizer.eos_token


def tokenize_pair(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """input_ids = prompt ids + completion ids (tokenized separately, no special tokens added); labels mask the prompt."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids)


def fit_length(
    input_ids: list[int], labels: list[int], max_length: int, overlong: Literal["truncate", "drop"]
) -> tuple[list[int], list[int]] | None:
    """Apply the length limit: cut the tail (`truncate`) or drop the example (`drop`, returns None)."""
    if len(input_ids) <= max_length:
        return input_ids, labels
    if overlong == "drop":
        return None
    return input_ids[:max_length], labels[:max_length]


def collate_right_padded(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training: pad id in input_ids, 0 in attention_mask, -100 in labels."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
