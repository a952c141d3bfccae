"""The task layer: the registry and TaskArgs (a user's own task in a module), the tasks' own rows and their splits,
the synthetic word problems, reasoning formats, and a single-turn task as a one-step environment."""

import re
import sys

import pytest

from data_modules.word_problems import generate_word_problems
from rcl.tasks import Score, Task, TaskArgs, available_tasks, get_task, register_task
from rcl.tasks.formats import ReasoningFormat


def test_builtin_tasks_are_registered_and_unknown_names_list_them():
    assert {"arithmetic", "math", "gsm8k"} <= set(available_tasks())
    with pytest.raises(ValueError, match="unknown task 'nope'; available: .*arithmetic"):
        get_task("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_task("math")(Task)


def test_a_users_task_is_registered_by_the_module_the_recipe_names(tmp_path, monkeypatch):
    (tmp_path / "my_task_module.py").write_text(
        "from rcl.tasks import Score, Task, register_task\n\n"
        "@register_task('shout_test')\n"
        "class Shout(Task):\n"
        "    fields = ('word',)\n\n"
        "    def __init__(self, bonus=0.0):\n"
        "        self.bonus = bonus\n\n"
        "    def score(self, completion, row):\n"
        "        ok = completion == row['word'].upper()\n"
        "        return Score(float(ok) + self.bonus, ok, {'outcome': 'correct' if ok else 'wrong'})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = TaskArgs(name="shout_test", kwargs={"bonus": 0.5}, module="my_task_module").build()
    assert task.name == "shout_test" and task.fields == ("word",)
    assert task.score("HI", {"word": "hi"}) == Score(1.5, True, {"outcome": "correct"})
    sys.modules.pop("my_task_module")


def test_a_single_turn_task_is_a_one_step_environment():
    task = get_task("math")
    row = {"question": "What is 2+2?", "ground_truth": "4"}
    assert task.reset(row) == "What is 2+2?"
    step = task.step("<solution>4</solution>")
    assert (step.observation, step.reward, step.done, step.info["correct"]) == ("", 1.0, True, True)


@pytest.mark.parametrize("name", ["arithmetic", "gsm8k"])
def test_task_rows_split_by_question_disjoint_and_prefix_stable(name):
    task = get_task(name)
    splits = {split: task.rows(split, 30, seed=0) for split in ("train", "val", "test")}
    questions = {split: {r["question"] for r in rows} for split, rows in splits.items()}
    assert all(len(q) == 30 for q in questions.values())
    assert not (questions["train"] & questions["val"]) and not (questions["val"] & questions["test"])
    assert not (questions["train"] & questions["test"])
    assert task.rows("val", 10, seed=0) == splits["val"][:10]
    for row in splits["test"]:  # every row's gold completion is right by its own task
        assert task.score(task.gold_completion(row), row).correct
    with pytest.raises(ValueError, match="split must be one of"):
        task.rows("dev", 3)


def test_math_has_no_rows_of_its_own():
    with pytest.raises(NotImplementedError, match="task 'math' has no built-in rows"):
        get_task("math").rows("train", 3)


def test_word_problems_are_deterministic_and_their_steps_compute_the_answer():
    problems = generate_word_problems(300, seed=3)
    assert problems == generate_word_problems(300, seed=3)
    assert problems[:50] == generate_word_problems(50, seed=3)
    assert problems != generate_word_problems(300, seed=4)
    assert len({p["question"] for p in problems}) == 300
    assert {p["difficulty"] for p in problems} == {1, 2, 3}
    for p in problems:
        notes = re.findall(r"<<([\d+\-*/]+)=(\d+)>>", p["solution"])
        assert notes, p["solution"]
        for expression, value in notes:
            assert int(eval(expression.replace("/", "//"))) == int(value), p["solution"]  # noqa: S307
        assert p["solution"].endswith(f"#### {p['answer']}") and int(p["answer"]) >= 0
        assert int(notes[-1][1]) == int(p["answer"])


@pytest.mark.parametrize(
    ("style", "completion", "answer"),
    [
        ("reasoning_answer", "<reasoning>2+2</reasoning>\n<answer>4</answer>", "4"),
        ("reasoning_answer", "  <reasoning>a</reasoning><answer> 4 </answer>\n", "4"),
        ("reasoning_answer", "<reasoning>a</reasoning><answer>4</answer> and more", None),  # text after the answer
        ("reasoning_answer", "Sure! <reasoning>a</reasoning><answer>4</answer>", None),  # text before
        ("reasoning_answer", "<reasoning>a</reasoning><answer></answer>", None),
        ("reasoning_answer", "<answer>4</answer>", None),
        ("think", "<think>2+2</think>\nThe answer is 4.", "The answer is 4."),
        ("think", "2+2 is 4</think> 4", "4"),  # the prompt opened <think>
        ("think", "<think>2+2 is 4</think>", None),  # no answer after the reasoning
        ("think", "<think>unfinished", None),
        ("think_answer", "<think>r</think> <answer>4</answer>", "4"),
        ("think_answer", "r</think><answer>4</answer>", "4"),
        ("think_answer", "<think>r</think> 4", None),
        ("think_answer", "<think>r</think><think>again</think><answer>4</answer>", None),
        ("none", "anything", "anything"),
    ],
)
def test_reasoning_formats(style, completion, answer):
    fmt = ReasoningFormat(style)
    assert fmt.answer_part(completion) == answer
    assert fmt.is_valid(completion) is (answer is not None)
    if style != "none":
        assert fmt.is_valid(fmt.wrap("because", "7")) and fmt.answer_part(fmt.wrap("because", "7")) == "7"


def test_unknown_format_and_mode_are_refused():
    with pytest.raises(ValueError, match="unknown reasoning format 'xml'"):
        get_task("math", format="xml")
    with pytest.raises(ValueError, match="format_mode must be gate or additive"):
        get_task("math", format="think", format_mode="both")


def test_gate_scores_a_broken_format_as_wrong_and_additive_reads_the_answer_anyway():
    row = {"ground_truth": "#### 12"}
    broken = "I think it's 12.\n<answer>12</answer>"
    gated = get_task("gsm8k", format="think_answer").score(broken, row)
    assert (gated.reward, gated.correct, gated.details["outcome"], gated.details["format_ok"]) == (
        0.0, False, "bad_format", False)
    assert not gated.has_answer
    additive = get_task("gsm8k", format="think_answer", format_mode="additive").score(broken, row)
    assert (additive.reward, additive.correct, additive.details["format_ok"]) == (1.0, True, False)
    good = get_task("gsm8k", format="think_answer").score("<think>3*4</think><answer>12</answer>", row)
    assert good.correct and good.details["format_ok"] and good.details["rule"] == "format:final_line"


def test_instruction_is_appended_to_the_prompt():
    row = {"question": "What is 2+2?", "ground_truth": "4"}
    assert get_task("math").prompt(row) == "What is 2+2?"
    task = get_task("math", format="think_answer", instruction=ReasoningFormat("think_answer").instruction)
    assert task.prompt(row) == "What is 2+2?\nThink inside <think></think>, then give only the final answer inside " \
                               "<answer></answer>."
