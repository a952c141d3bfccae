import pytest

from rcl.prompts import (
    PromptTemplates,
    extract_teaching,
    render_prompt,
    student_messages,
    teacher_messages,
    teacher_target,
)


def test_teacher_messages_and_target_shapes():
    t = PromptTemplates(teacher_system="SYS")
    msgs = teacher_messages(t, "What is 1+2?", "add")
    assert msgs == [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Question: What is 1+2?\nStudent's approach: add"},
    ]
    assert teacher_target(" carry ", "ones 1+2=3 ") == "<thinking>carry</thinking>\n<teaching>ones 1+2=3</teaching>"


def test_student_messages_cover_every_kind_and_need_teaching():
    t = PromptTemplates(student_system=None)
    assert student_messages(t, "baseline", "Q?") == [
        {"role": "user", "content": "Q?\nPut the final answer in <solution></solution>."}
    ]
    assert student_messages(t, "probe", "Q?")[0]["content"] == "Q?\nState your approach briefly."
    assert "Guidance: hint" in student_messages(t, "with_teaching", "Q?", "hint")[0]["content"]
    with pytest.raises(ValueError, match="needs a teaching"):
        student_messages(t, "with_teaching", "Q?")


def test_render_prompt_uses_the_roles_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = render_prompt(tok, [{"role": "user", "content": "x"}])
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "completion, missing, text, tags",
    [
        ("<thinking>a</thinking>\n<teaching> b </teaching>", "strip_thinking", "b", True),
        ("<teaching>first</teaching><teaching>second</teaching>", "strip_thinking", "first", True),
        ("<thinking>secret</thinking> shown", "strip_thinking", "shown", False),
        ("<thinking>secret</thinking> shown", "empty", "", False),
        # a teaching cut off by the token budget: the guidance so far is shown, but it earns no tags
        ("<teaching>unclosed", "strip_thinking", "unclosed", False),
        ("<teaching>unclosed", "empty", "", False),
        # an unclosed thought is private to the end of the completion, and may state the answer
        ("<thinking>The answer is 42", "strip_thinking", "", False),
        ("hint first <thinking>The answer is 42", "strip_thinking", "hint first", False),
        ("<thinking>a</thinking><teaching>carry the one <thinking>so it is 42", "strip_thinking", "carry the one",
         False),
        # a teaching opened inside an unclosed thought is still private
        ("<thinking>so 42 <teaching>x</teaching>", "strip_thinking", "", False),
        # reasoning inside a teaching block is not shown either
        ("<teaching>carry <thinking>42</thinking>the one</teaching>", "strip_thinking", "carry the one", True),
        # the reasoning tags models write by themselves, in any case, are private too
        ("<think>so it is 42</think> carry the one", "strip_thinking", "carry the one", False),
        ("<THINKING>The answer is 42</THINKING><Teaching>carry the one</Teaching>", "strip_thinking",
         "carry the one", True),
        # the chat template opened the thought (Qwen3): all before the closing tag is private
        ("the answer is 42</think>\n<teaching>carry the one</teaching>", "strip_thinking", "carry the one", True),
        ("the answer is 42</think> carry the one", "strip_thinking", "carry the one", False),
    ],
)
def test_extract_teaching_rules(completion, missing, text, tags):
    got = extract_teaching(completion, missing)
    assert (got.text, got.has_tags) == (text, tags)
