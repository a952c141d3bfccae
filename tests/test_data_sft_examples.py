"""SFT example formatting: prompts from the one prompt builder, exact completion-only masks, truncation, collation."""

import pytest
import torch
from transformers import AutoTokenizer

from data_modules import DataError, TeacherStudentDataModule
from data_modules.sft_examples import (
    IGNORE_INDEX,
    atlas_sft_pair,
    collate_right_padded,
    fit_length,
    generic_pairs,
    messages_pair,
    tokenize_pair,
)
from rcl.prompts import PromptTemplates, render_prompt, student_messages, teacher_messages, teacher_target

ATLAS_ROW = {"problem_text": "What is 17+25?", "student_approach": "not sure", "teacher_diagnosis": "carry",
             "teacher_teaching": "ones 7+5=12, carry 1"}
GENERIC_ROW = {"question": "What is 17+25?", "solution": "<solution>42</solution>", "answer": "42",
               "teaching": "ones 7+5=12, carry 1", "approach": "not sure"}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_atlas_sft_pair_uses_the_teacher_prompt_and_target(tok):
    templates = PromptTemplates()
    prompt, completion = atlas_sft_pair(tok, templates, ATLAS_ROW)
    assert prompt == render_prompt(tok, teacher_messages(templates, "What is 17+25?", "not sure"))
    assert completion == "<thinking>carry</thinking>\n<teaching>ones 7+5=12, carry 1</teaching><|im_end|>"
    assert completion == teacher_target("carry", "ones 7+5=12, carry 1") + tok.eos_token


def test_labels_mask_exactly_the_prompt(tok):
    prompt, completion = atlas_sft_pair(tok, PromptTemplates(), ATLAS_ROW)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
    input_ids, labels = tokenize_pair(tok, prompt, completion)
    assert input_ids == prompt_ids + completion_ids
    assert labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    assert completion_ids[-1] == tok.eos_token_id
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == completion
    assert tok.decode(input_ids[: labels.index(completion_ids[0])]) == prompt


def test_generic_pairs_give_each_student_behaviour(tok):
    t = PromptTemplates()
    pairs = generic_pairs(tok, t, GENERIC_ROW, ["baseline", "with_teaching", "probe"])
    assert pairs == [
        (render_prompt(tok, student_messages(t, "baseline", GENERIC_ROW["question"])), "<solution>42</solution><|im_end|>"),
        (render_prompt(tok, student_messages(t, "with_teaching", GENERIC_ROW["question"], GENERIC_ROW["teaching"])),
         "<solution>42</solution><|im_end|>"),
        (render_prompt(tok, student_messages(t, "probe", GENERIC_ROW["question"])), "not sure<|im_end|>"),
    ]
    assert "Guidance: ones 7+5=12, carry 1" in pairs[1][0]


def test_generic_solution_without_tags_is_kept_as_written(tok):
    row = {"question": "q", "solution": "The sum is 42.", "answer": "42", "reasoning_trace": "7+5=12, carry"}
    [(_, completion)] = generic_pairs(tok, PromptTemplates(), row, ["baseline"])
    assert completion == "7+5=12, carry\nThe sum is 42.<|im_end|>"
    row_without = {"question": "q", "solution": "S", "teaching": None, "approach": None}
    assert len(generic_pairs(tok, PromptTemplates(), row_without, ["baseline", "with_teaching", "probe"])) == 1


def test_messages_pair_splits_at_the_last_assistant_turn(tok):
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4"}]}
    prompt, completion = messages_pair(tok, row, 0)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert completion == "4<|im_end|>"
    with pytest.raises(DataError, match="row 3: the last of at least two turns must be the assistant's"):
        messages_pair(tok, {"messages": row["messages"][:2]}, 3)


def test_fit_length_truncates_or_drops():
    ids, labels = [1, 2, 3, 4, 5], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5]
    assert fit_length(ids, labels, 5, "truncate") == (ids, labels)
    assert fit_length(ids, labels, 3, "truncate") == ([1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 3])
    assert fit_length(ids, labels, 3, "drop") is None


def test_collate_right_pads():
    batch = collate_right_padded([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                  {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["input_ids"].dtype == torch.long


def test_truncation_drops_examples_without_target_and_all_gone_is_an_error(tiny_model_dir):
    dm = TeacherStudentDataModule(tokenizer_name_or_path=tiny_model_dir, synthetic_size=40, val_size=0, max_length=20)
    with pytest.raises(DataError, match=r"no train example has a target token left \(max_length 20, overlong truncate\)"):
        dm.setup("fit")


def test_overlong_drop_and_truncate_counts(tiny_model_dir):
    kept = TeacherStudentDataModule(tokenizer_name_or_path=tiny_model_dir, synthetic_size=40, val_size=0,
                                    max_length=1024)
    kept.setup("fit")
    longest = max(len(e) for e in kept.train_set["input_ids"])
    cut = TeacherStudentDataModule(tokenizer_name_or_path=tiny_model_dir, synthetic_size=40, val_size=0,
                                   max_length=longest - 1)
    cut.setup("fit")
    assert len(cut.train_set) == 40 and max(len(e) for e in cut.train_set["input_ids"]) == longest - 1
    dropped = TeacherStudentDataModule(tokenizer_name_or_path=tiny_model_dir, synthetic_size=40, val_size=0,
                                       max_length=longest - 1, overlong="drop")
    dropped.setup("fit")
    n_longest = sum(len(e) == longest for e in kept.train_set["input_ids"])
    assert len(dropped.train_set) == 40 - n_longest
