"""The code task: extraction, the reward formula, stdin/stdout and assert-style scoring, and HumanEval end to end."""

from __future__ import annotations

import ast
import json
import textwrap

import pytest

from rcl.tasks import get_task
from rcl.tasks.code import CodeTask, called_first, continuation, defines, prompt_context
from rcl.tasks.extract import answer_text, extract_code, fenced_body, last_tagged, strip_reasoning

SANDBOX = {"workers": 2, "timeout_s": 5.0}


@pytest.fixture(scope="module")
def task() -> CodeTask:
    return get_task("code", sandbox=SANDBOX)


# ------------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    "completion, code",
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("first\n```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```\n", "print(2)\n"),  # the last block
        ("```python\nprint(1)\n```\nOutput:\n```text\n1\n```", "print(1)\n"),  # language-aware: not the output
        ("```\nprint(3)\n```\n```bash\nls\n```", "print(3)\n"),  # untagged beats another language
        ("```bash\nls\n```", "ls\n"),  # any block, when that is all there is
        ("```python\nprint(1)\n```\n```python\nprint(2", "print(2\n"),  # a truncated final block
        ("print(4)", "print(4)\n"),  # no fences: the whole text
        ("<think>```python\nprint(0)\n```</think>\n```python\nprint(5)\n```", "print(5)\n"),  # reasoning ignored
        ("```python\nprint(0)\n```<answer>\n```py\nprint(6)\n```\n</answer>", "print(6)\n"),  # the answer section
        ("<answer>print(7)</answer>", "print(7)\n"),
        ("<think>unfinished thought ```python\nprint(8)\n```", ""),  # an unclosed thought hides the rest
        # the chat template opened the thought (Qwen3, DeepSeek-R1): the code drafted in it is not the answer
        ("drafting ```python\nprint(0)\n```</think>\nprint(9)", "print(9)\n"),
        ("", ""),
        # Markdown's fences: an indented fence (inside a numbered step) gives its body without that indentation
        ("1. Write it:\n   ```python\n   def f():\n       return 1\n   ```\n2. Done.", "def f():\n    return 1\n"),
        ("~~~python\nprint(10)\n~~~", "print(10)\n"),  # tildes
        ('````python\nprint("```")\n```\n````', 'print("```")\n```\n'),  # a longer fence holds ``` lines
        ("Use ```x``` inline, then:\n```python\nprint(11)\n```", "print(11)\n"),  # inline code is no fence
        ("Code: ```python\nprint(12)\n```", "print(12)\n"),  # as small models write it
        ("```python\nreturn 13```\nafter", "return 13\n"),
        ("```python\nprint(0)\n``` and then ```python\nprint(14)\n```", "print(14)\n"),
    ],
)
def test_extract_code(completion, code):
    assert extract_code(completion, ["python", "py"]) == code


def test_fenced_body_is_a_whole_text_of_one_block():
    assert fenced_body("  ```\nabc\n```  ") == "abc\n"
    assert fenced_body("~~~text\n  x\n~~~") == "  x\n"
    for text in ("x ```\nabc\n```", "```\na\n```\n```\nb\n```", "```\na\n```\nthen", "plain"):
        assert fenced_body(text) is None


def test_tags_and_reasoning():
    assert strip_reasoning("a<thinking>b</thinking>c<reasoning>d") == "ac"
    assert strip_reasoning("opened by the prompt</THINK>a<think>b</think>c") == "ac"
    assert last_tagged("<INPUT>1</INPUT> <input>2</input>", "INPUT") == "2"
    assert last_tagged("<INPUT>1</INPUT> <INPUT>3", "INPUT") == "3"
    assert last_tagged("none", "INPUT") is None
    assert answer_text("<think>x</think>so <answer>42</answer>") == "42"


def test_defines_finds_top_level_names_only():
    assert defines("def f():\n    pass\n", "f")
    assert defines("import math as f\n", "f") and defines("f = lambda: 1\n", "f")
    assert not defines("def g():\n    def f():\n        pass\n", "f")
    assert not defines("def f(:\n", "f")


# ------------------------------------------------------------------------------------------------ rewards


@pytest.mark.parametrize(
    "mode, base, perfect, passed, total, reward",
    [
        ("partial", 1.0, 1.0, 0, 3, 0.0),
        ("partial", 1.0, 1.0, 2, 3, 2 / 3),
        ("partial", 1.0, 1.0, 3, 3, 2.0),
        ("partial", 0.5, 2.0, 3, 3, 2.5),
        ("partial", 1.0, 0.0, 1, 4, 0.25),  # "only test-case reward"
        ("partial", 0.0, 1.0, 2, 3, 0.0),  # "only perfect bonus"
        ("binary", 1.0, 1.0, 0, 3, 0.0),
        ("binary", 1.0, 1.0, 2, 3, 0.0),
        ("binary", 1.0, 1.0, 3, 3, 1.0),
    ],
)
def test_reward_formula(mode, base, perfect, passed, total, reward):
    task = CodeTask(sandbox=SANDBOX, reward=mode, base_weight=base, perfect_weight=perfect)
    assert task.reward(passed, total) == pytest.approx(reward)


ROW = {
    "question": "Print the sum of two integers.",
    "tests": [
        {"input": "1 2\n", "output": "3"},
        {"input": "5 5\n", "output": "10"},
        {"input": "-1 -1\n", "output": "-2"},
    ],
}


def test_stdio_partial_credit_and_details(task):
    # Right except for negative numbers: 2 of 3.
    code = "```python\na, b = map(int, input().split())\nprint(abs(a) + abs(b))\n```"
    score = task.score(code, ROW)
    assert score.reward == pytest.approx(2 / 3) and not score.correct
    assert score.details["passed"] == 2 and score.details["total"] == 3
    assert score.details["outcome"] == "wrong_answer" and score.details["outcomes"] == {"pass": 2, "wrong_answer": 1}
    right = task.score("```python\nprint(sum(map(int, input().split())))\n```", ROW)
    assert right.reward == pytest.approx(2.0) and right.correct and right.details["outcome"] == "pass"
    json.dumps(right.details)  # details must be JSON-serialisable


def test_tests_may_be_a_json_string_and_max_tests_truncates(task):
    row = dict(ROW, tests=json.dumps(ROW["tests"]))
    code = "```python\na, b = map(int, input().split())\nprint(abs(a) + abs(b))\n```"
    assert task.score(code, row).details["passed"] == 2
    training = CodeTask(sandbox=SANDBOX, max_tests=2)
    score = training.score(code, row)
    assert score.details["total"] == 2 and score.correct and score.reward == pytest.approx(2.0)
    evaluation = training.for_evaluation()
    assert evaluation.score(code, row).details["total"] == 3 and training.max_tests == 2


def test_failure_classes_reach_the_score(task):
    slow = CodeTask(sandbox=dict(SANDBOX, timeout_s=1.0))
    assert slow.score("```python\nwhile True: pass\n```", ROW).details["outcome"] == "timeout"
    assert task.score("```python\nraise SystemExit(3)\n```", ROW).details["outcome"] == "crash"
    assert task.score("```python\nx = bytearray(8 * 1024**3)\n```", ROW).details["outcome"] == "memory"
    empty = task.score("", ROW)
    assert empty.reward == 0.0 and empty.details["outcome"] == "no_answer" and "error" not in empty.details


def test_rows_without_tests_are_verifier_errors_not_wrong_answers(task):
    for row in ({"question": "q"}, {"question": "q", "tests": []}, {"question": "q", "tests": "not json"}):
        score = task.score("print(1)", row)
        assert score.details["outcome"] == "infra_error" and score.details["error"] and not score.correct


def test_binary_mode_for_all_or_nothing(task):
    binary = CodeTask(sandbox=SANDBOX, reward="binary")
    code = "```python\na, b = map(int, input().split())\nprint(abs(a) + abs(b))\n```"
    assert binary.score(code, ROW).reward == 0.0
    assert binary.score("```python\nprint(sum(map(int, input().split())))\n```", ROW).reward == 1.0


def test_generated_programs_rows_and_their_reference_solutions(task):
    programs = CodeTask(sandbox=SANDBOX, dataset="programs", tests_per_problem=3)
    rows = programs.rows("train", 6, seed=1)
    assert rows == programs.rows("train", 6, seed=1) and rows != programs.rows("test", 6, seed=1)
    assert all(len(row["tests"]) == 3 and row["question"] and row["solution"] for row in rows)
    scores = programs.score_batch([programs.gold_completion(row) for row in rows], rows)
    assert all(score.correct for score in scores)


# ------------------------------------------------------------------------------------------------ HumanEval


@pytest.fixture(scope="module")
def humaneval(task):
    rows = task.rows("test")
    assert len(rows) == 164 and len({row["task_id"] for row in rows}) == 164
    return rows


def test_humaneval_canonical_solutions_score_164_of_164_through_rcl_score(task, humaneval, tmp_path, capsys):
    from rcl.__main__ import main

    source, scored = tmp_path / "canonical.jsonl", tmp_path / "scored.jsonl"
    fields = ("task_id", "question", "prompt", "test", "entry_point", "solution")
    source.write_text("".join(json.dumps({**{k: row[k] for k in fields}, "completion": task.gold_completion(row)})
                              + "\n" for row in humaneval))
    main(["score", "--task", "code", "--kwargs", "{sandbox: {workers: 2}}", "--input", str(source),
          "--output", str(scored)])
    results = [json.loads(line) for line in scored.read_text().splitlines()]
    failed = [(r["task_id"], r["details"]) for r in results if not r["correct"]]
    assert failed == [] and len(results) == 164
    assert sum(r["reward"] for r in results) == pytest.approx(2.0 * 164)
    assert {r["details"]["outcome"] for r in results} == {"pass"}
    assert "accuracy 1.000 (164/164)" in capsys.readouterr().err


@pytest.mark.parametrize("stub", ["    pass\n", "    return None\n"])
def test_humaneval_stubs_score_0(task, humaneval, stub):
    completions = [f"```python\n{row['prompt']}{stub}```" for row in humaneval]
    scores = task.score_batch(completions, humaneval)
    assert sum(score.reward for score in scores) == 0.0
    assert {score.details["outcome"] for score in scores} <= {"wrong_answer", "crash"}


def test_humaneval_body_only_completion_gets_the_prompt(task, humaneval):
    row = humaneval[0]
    body = row["solution"][len(row["prompt"]) :]
    assert task.score(f"```python\n{body}```", row).correct
    # the body with its indentation lost in the fence: its `return` is outside any function, so it is indented back
    flat = textwrap.dedent(body)
    assert flat != body and task.score(f"```python\n{flat}```", row).correct
    assert continuation("def f():\n", "x = 1\n") == "def f():\nx = 1\n"  # not a body: left as it is


def entry_point_only(row: dict) -> str:
    """The canonical solution's entry-point function alone: no imports, no helpers, as models often reply."""
    solution = row["solution"]
    (node,) = [n for n in ast.parse(solution).body if isinstance(n, ast.FunctionDef) and n.name == row["entry_point"]]
    return "".join(solution.splitlines(keepends=True)[node.lineno - 1 : node.end_lineno])


def test_humaneval_whole_function_without_the_prompts_imports_and_helpers_still_runs(task, humaneval):
    """`def f(numbers: List[float])` without `from typing import List`, or decode_cyclic without the prompt's
    encode_cyclic: the prompt's context goes first, so every canonical function passes on its own."""
    completions = [f"```python\n{entry_point_only(row)}```" for row in humaneval]
    assert "from typing" not in completions[0] and "List[float]" in completions[0]
    scores = task.score_batch(completions, humaneval)
    assert [row["task_id"] for row, score in zip(humaneval, scores) if not score.correct] == []
    # the model's own definitions win over the prompt's: a helper redefined wrongly fails the problem
    (row10,) = [row for row in humaneval if row["task_id"] == "HumanEval/10"]
    broken_helper = "def is_palindrome(string):\n    return True\n\n" + entry_point_only(row10)
    assert not task.score(f"```python\n{broken_helper}```", row10).correct


def test_prompt_context_keeps_what_is_not_the_entry_point():
    prompt = "import math\nfrom typing import List\n\nK = 3\n\n@cache\ndef helper(x):\n    return x\n\n\n" \
             "def solve(xs: List[int]) -> int:\n    \"\"\"Doc.\"\"\"\n"
    assert prompt_context(prompt, "solve") == ("import math\nfrom typing import List\nK = 3\n"
                                               "@cache\ndef helper(x):\n    return x\n\n\n")
    assert prompt_context("def solve(:\nimport os\n", "solve") == "import os\n"  # unparsable: imports only
    assert prompt_context("def solve():\n    pass\n", "solve") == ""


def test_a_solution_followed_by_an_example_usage_block_is_the_solution(task, humaneval):
    row = humaneval[0]
    usage = f"```python\nprint({row['entry_point']}([1.0, 2.0], 0.5))\n```"
    reply = f"Here is the function:\n```python\n{row['solution']}```\nExample usage:\n{usage}"
    assert task.score(reply, row).correct
    assert task.score(f"{usage}\n```python\n{row['solution']}```", row).correct
    mbpp = task.score(f"```python\n{MBPP_ROW['solution']}```\nUsage:\n```python\nprint(similar((1,), (1,)))\n```",
                      MBPP_ROW)
    assert mbpp.correct
    assert extract_code("```python\na = 1\n```\n```python\nb = 2\n```", prefer=lambda b: "a =" in b) == "a = 1\n"
    assert extract_code("```python\na = 1\n```", prefer=lambda b: False) == "a = 1\n"  # none preferred: the rule


def test_humaneval_split_and_sampling(task):
    with pytest.raises(ValueError, match="only a test split"):
        task.rows("train")
    assert task.rows("test", num=5, seed=3) == task.rows("test", num=5, seed=3)
    assert len(task.rows("test", num=5, seed=3)) == 5


MBPP_ROW = {
    "question": "Write a function to find the shared elements of two tuples.",
    "asserts": ["assert set(similar((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))",
                "assert set(similar((1, 2, 3, 4), (5, 4, 3, 7))) == set((3, 4))",
                "assert math.isclose(len(similar((1,), (2,))), 0)"],
    "solution": "def similar(a, b):\n    return tuple(set(a) & set(b))\n",
}


def test_mbpp_style_asserts_score_one_test_per_assert(task):
    assert CodeTask(sandbox=SANDBOX, test_format="asserts").fields == ("asserts", "solution")
    prompt = task.prompt(MBPP_ROW)
    assert prompt.startswith(MBPP_ROW["question"]) and all(a in prompt for a in MBPP_ROW["asserts"])
    assert task.prompt({**MBPP_ROW, "question": prompt}) == prompt  # not shown twice
    right = task.score(task.gold_completion(MBPP_ROW), MBPP_ROW)
    assert right.correct and right.reward == 2.0 and right.details["passed"] == 3  # math comes from the judge
    # passes the first two asserts only: partial credit, the third's failure named
    partial = "```python\ndef similar(a, b):\n    return tuple(set(a) & set(b)) or (0,)\n```"
    score = task.score(partial, {**MBPP_ROW, "asserts": json.dumps(MBPP_ROW["asserts"])})  # a JSON string too
    assert score.reward == pytest.approx(2 / 3) and score.details["outcome"] == "wrong_answer"
    assert CodeTask(sandbox=SANDBOX, max_tests=2).score(partial, MBPP_ROW).reward == 2.0
    hack = "```python\nclass E:\n    def __eq__(self, o):\n        return True\ndef similar(a, b):\n    return E()\n```"
    assert task.score(hack, MBPP_ROW).reward == 0.0


RECT_ROW = {
    "question": "Write a function that returns the total area of a list of rectangles, scaled.",
    "asserts": ["assert total_area([Rect(2, 3), Rect(1, 1)]) == 7", "assert total_area([]) == 0",
                "assert total_area(rects=(Rect(4, 5),), scale=2) == 80"],
    "solution": "class Rect:\n    def __init__(self, w, h):\n        self.w, self.h = w, h\n\n"
                "def total_area(rects, scale=1):\n    return sum(r.w * r.h for r in rects) * scale ** 2\n",
}


def test_asserts_that_build_the_solutions_own_objects(task):
    """`Rect(2, 3)` is the program's class: the object stays in the sandbox and the judge passes its handle back
    to `total_area`, so a right solution passes every assert and a wrong one fails them."""
    assert task.score(task.gold_completion(RECT_ROW), RECT_ROW).details["passed"] == 3
    perimeter = RECT_ROW["solution"].replace("r.w * r.h", "2 * (r.w + r.h)")
    wrong = task.score(f"```python\n{perimeter}```", RECT_ROW)
    assert wrong.details["passed"] == 1 and wrong.details["outcome"] == "wrong_answer"  # only the empty list


def test_mbpp_setup_code_and_the_function_under_test():
    assert called_first(["assert set(similar((1,), (1,))) == {1}"]) == "similar"
    assert called_first(["assert math.isclose(area(2), 12.56, rel_tol=0.01)"]) == "area"
    assert called_first(["assert True"]) is None and called_first(["assert (("]) is None
    row = {"question": "Circle area.", "asserts": ["assert abs(area(1) - PI) < 1e-9"], "test_setup_code": "PI = 3.0",
           "solution": "def area(r):\n    return 3.0 * r * r\n"}
    task = get_task("code", sandbox=SANDBOX)
    assert task.score(task.gold_completion(row), row).correct
    assert not task.score("```python\nimport math\ndef area(r):\n    return math.pi * r * r\n```", row).correct
    assert task.score("print(1)", {**row, "asserts": ["assert True"]}).details["outcome"] == "infra_error"


def test_a_float_tolerance_accepts_real_valued_answers_within_it():
    row = {"tests": [{"input": "3\n", "output": "0.3333333333"}], "solution": "print(1 / int(input()))\n"}
    rounded = "```python\nprint(round(1 / int(input()), 6))\n```"
    assert get_task("code", sandbox=SANDBOX).score(rounded, row).details["outcome"] == "wrong_answer"
    assert get_task("code", sandbox=SANDBOX, float_tolerance=1e-6).score(rounded, row).correct
    assert not get_task("code", sandbox=SANDBOX, float_tolerance=1e-9).score(rounded, row).correct
    with pytest.raises(ValueError, match="float_tolerance must be >= 0"):
        get_task("code", sandbox=SANDBOX, float_tolerance=-1.0)


def test_fields_name_what_rows_must_carry():
    assert CodeTask(sandbox=SANDBOX).fields == ("test", "entry_point", "prompt", "solution")
    assert CodeTask(sandbox=SANDBOX, dataset="programs").fields == ("tests", "solution")
    assert CodeTask(sandbox=SANDBOX, test_format="stdio").fields == ("tests", "solution")
    assert get_task("deduction", sandbox=SANDBOX).fields == ("tests", "solution")
    assert get_task("sat").fields == ("num_vars", "clauses", "planted")
    assert get_task("abduction", sandbox=SANDBOX).fields == ("program", "output", "input")


def test_a_program_timeout_is_the_models_failure_not_the_verifiers():
    from rcl.tasks.health import VerifierCounts

    slow = CodeTask(sandbox=dict(SANDBOX, timeout_s=1.0))
    loop = slow.score("```python\nwhile True: pass\n```", ROW)
    assert loop.details["outcome"] == "timeout"
    broken = slow.score("print(1)", {"question": "q"})
    counts = VerifierCounts().add([loop, broken])
    assert (counts.checks, counts.timeouts, counts.errors) == (2, 0, 1)


def test_a_direct_rollout_scores_code_with_partial_credit_in_one_batch_per_group(tiny_model_dir, monkeypatch):
    from test_rollout import ScriptedEngine, settings
    from transformers import AutoTokenizer

    from rcl.prompts import PromptTemplates
    from rcl.rewards import get_reward
    from rcl.rl.rollout import RolloutRunner

    replies = [
        "```python\nprint(sum(map(int, input().split())))\n```",  # all 3 tests: 1 + bonus 1
        "```python\na, b = map(int, input().split())\nprint(abs(a) + abs(b))\n```",  # 2 of 3
        "```python\nwhile True: pass\n```",  # timeout: 0
        "I cannot write code.",  # no fence: the whole text runs, a syntax error: 0
    ]
    code = CodeTask(sandbox=dict(SANDBOX, timeout_s=2.0))
    batches = []
    real = code.score_batch
    monkeypatch.setattr(code, "score_batch", lambda texts, rows: batches.append(len(texts)) or real(texts, rows))
    policy = ScriptedEngine(AutoTokenizer.from_pretrained(tiny_model_dir), lambda text, j: replies[j])
    runner = RolloutRunner(policy, None, PromptTemplates(), {"correctness": get_reward("correctness")},
                           {"correctness": 1.0}, code)
    rollout = runner.run([ROW], 0, settings(protocol="direct"))
    assert rollout.rewards.tolist() == pytest.approx([2.0, 2 / 3, 0.0, 0.0])
    assert [i.p_with for i in rollout.interactions] == [1.0, 0.0, 0.0, 0.0]
    assert [i.score.details["outcome"] for i in rollout.interactions] == ["pass", "wrong_answer", "timeout", "crash"]
    assert batches == [4]
    assert rollout.verifier["verifier/timeouts"] == 0.0  # the program's timeout is not the verifier's


def test_the_code_quickstart_runs_a_step_on_exported_rows(tmp_path, models_dir):
    from pathlib import Path

    from rcl.rl.loop import cli_main
    from rcl.tasks.export import export

    configs = Path(__file__).resolve().parents[1] / "lightning_configs"
    rows = tmp_path / "rl.jsonl"
    export("code", str(rows), num=12, kwargs={"dataset": "programs", "tests_per_problem": 2})
    out = tmp_path / "run"
    cli_main("fit", [
        "--config", str(configs / "quickstart_code.yaml"), "--data.init_args.dataset", str(rows),
        "--data.init_args.val_size", "4", "--trainer.out_dir", str(out),
        # only to keep the test short (an untrained policy: the rewards are ~0, the plumbing is what is checked):
        "--teacher.model_name_or_path", "tiny-1m", "--student.model_name_or_path", "tiny-1m",
        "--trainer.max_steps", "1", "--grpo.prompts_per_step", "2", "--grpo.num_generations", "2",
        "--generation.max_completion_length", "8", "--eval.num_prompts", "2", "--trainer.loggers", "[csv]"])
    steps = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    trained = [r for r in steps if "reward" in r]
    assert [r["step"] for r in trained] == [1] and trained[0]["verifier/checks"] == 4.0
    assert any("eval/accuracy" in r for r in steps)


def test_code_recipes_are_consistent_with_their_sft_and_data():
    from pathlib import Path

    import yaml

    from rcl.tasks import TaskArgs

    configs = Path(__file__).resolve().parents[1] / "lightning_configs"

    def load(name):
        return yaml.safe_load((configs / name).read_text())

    quick, sft = load("quickstart_code.yaml"), load("quickstart_code_sft.yaml")
    assert quick["templates"] == sft["data"]["init_args"]["templates"]  # sampled in the format it was trained on
    assert quick["teacher"]["model_name_or_path"] == "runs/quickstart_code_sft/hf_model"
    for recipe, data_file in ((quick, "rl.jsonl"), (sft, "sft.jsonl")):
        assert recipe["data"]["init_args"]["dataset"] == f"data/quickstart_code/{data_file}"
    header = (configs / "quickstart_code.yaml").read_text().split("\ntrainer:")[0]
    assert "data/quickstart_code/sft.jsonl --split sft" in header
    assert "data/quickstart_code/rl.jsonl --split train" in header
    families = quick["task"]["kwargs"]["families"]
    assert f"families: [{', '.join(families)}]" in header
    grpo = TaskArgs(**load("code_grpo.yaml")["task"]).build()
    assert (grpo.max_tests, grpo.reward_mode, grpo.base_weight, grpo.perfect_weight) == (5, "partial", 1.0, 1.0)
    assert grpo.sandbox_config.require_isolation and grpo.fields == ("tests", "solution")
    teaching = TaskArgs(**load("code_rcl.yaml")["task"]).build()
    assert teaching.reward_mode == "binary" and load("code_rcl.yaml")["grpo"]["protocol"] == "adaptive_teaching"
    affine = TaskArgs(**load("affine_tasks.yaml")["task"]).build()
    assert affine.subtasks == ["sat", "abduction", "deduction"]
    assert affine.tasks["deduction"].sandbox_config.require_isolation
