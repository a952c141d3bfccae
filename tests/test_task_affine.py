"""SAT, abduction and deduction: generators, all-or-nothing verifiers, and the SFT label check."""

from __future__ import annotations

import random

import pytest

from rcl.tasks import available_tasks, get_task
from rcl.tasks.labels import check_labels, verified_sft_rows
from rcl.tasks.programs import FAMILIES, generate
from rcl.tasks.sat import format_assignment, parse_assignment, planted_instance, satisfied

SANDBOX = {"workers": 2, "timeout_s": 5.0}


def test_tasks_are_registered():
    assert {"code", "sat", "abduction", "deduction"} <= set(available_tasks())


# ------------------------------------------------------------------------------------------------ SAT


@pytest.fixture(scope="module")
def sat():
    return get_task("sat")


@pytest.fixture(scope="module")
def sat_rows(sat):
    return sat.rows("train", 200, seed=0)


def test_sat_instances_are_planted_k_sat_near_ratio_4_2(sat, sat_rows):
    assert sat_rows == sat.rows("train", 200, seed=0) and sat_rows != sat.rows("test", 200, seed=0)
    for row in sat_rows:
        n, clauses = row["num_vars"], row["clauses"]
        assert 10 <= n <= 20 and len(clauses) == round(4.2 * n)
        k = len(clauses[0])
        assert 3 <= k <= 5 and all(len(c) == k and len({abs(lit) for lit in c}) == k for c in clauses)
        assert all(1 <= abs(lit) <= n for c in clauses for lit in c)
    assert {len(row["clauses"][0]) for row in sat_rows} == {3, 4, 5}


def test_every_planted_solution_scores_1(sat, sat_rows):
    for row in sat_rows:
        score = sat.score(sat.gold_completion(row), row)
        assert score.reward == 1.0 and score.correct and score.details["outcome"] == "pass"


def test_flipped_assignments_usually_score_0(sat, sat_rows):
    rng = random.Random(0)
    one_flip = complement = 0
    for row in sat_rows:
        values = list(row["planted"])
        j = rng.randrange(row["num_vars"])
        values[j] = not values[j]
        one_flip += sat.score(format_assignment(values), row).reward
        complement += sat.score(format_assignment([not v for v in row["planted"]]), row).reward
    assert one_flip < 0.5 * len(sat_rows)  # 57 of 200 still satisfy everything after one flip (measured)
    assert complement < 0.1 * len(sat_rows)  # 4 of 200


def test_sat_parsing_and_partial_answers(sat):
    assert parse_assignment("x1=True, x2 = false; x3: 1 x4 is F, x1=0") == {1: False, 2: False, 3: True, 4: False}
    # as models write it: subscripts, LaTeX text, markdown bold, arrows
    written = "$x_1 = \\text{True}$, $x_{2} = \\mathrm{F}$\n- x3 = **False**\n- x_4 -> T\n- x5 → true"
    assert parse_assignment(written) == {1: True, 2: False, 3: False, 4: True, 5: True}
    assert parse_assignment("max1=True, box2 = False, x6=Truth") == {}
    clauses, solution = planted_instance(random.Random(1), 10, 3, 4.2)
    assert satisfied(clauses, dict(enumerate(solution, 1))) == len(clauses)
    assert satisfied(clauses, {}) == 0  # unassigned variables satisfy no literal
    assert sat.score("I don't know", {"num_vars": 10, "clauses": clauses}).details["outcome"] == "no_answer"
    row = {"num_vars": 10, "clauses": clauses, "planted": solution}
    missing_one = ", ".join(f"x{i}={v}" for i, v in enumerate(solution, 1) if i != 1)
    assert sat.score(missing_one, row).details["assigned"] == 9
    thought = f"<think>x1={not solution[0]}</think><answer>{format_assignment(solution)}</answer>"
    assert sat.score(thought, row).correct
    assert sat.score(format_assignment(solution) + ", x99=True", row).correct  # out-of-range names ignored


def test_sat_label_check_rejects_the_guides_random_labels(sat, sat_rows):
    rows = sat_rows[:100]
    assert len(verified_sft_rows(sat, rows)) == 100
    rng = random.Random(3)
    random_labels = [format_assignment([rng.random() < 0.5 for _ in range(row["num_vars"])]) for row in rows]
    check = check_labels(sat, rows, random_labels)
    assert len(check.rejected) > 90
    assert all(sat.score(row["label"], row).correct for row in check.accepted)  # the few that pass are right
    with pytest.raises(ValueError, match="SFT labels fail"):
        verified_sft_rows(sat, [dict(rows[0], planted=[not v for v in rows[0]["planted"]])])


# ------------------------------------------------------------------------------------------------ programs


def test_every_family_solve_agrees_with_its_program_in_the_sandbox():
    deduction = get_task("deduction", sandbox=SANDBOX, tests_per_problem=4)
    rows = []
    for name in FAMILIES:
        for program, rng in generate("check", 2, seed=7, families=[name]):
            inputs = [program.make_input(rng) for _ in range(4)]
            rows.append({"question": "", "tests": [{"input": i, "output": program.solve(i)} for i in inputs],
                         "solution": program.code})
    assert len(verified_sft_rows(deduction, rows)) == len(rows)


# ------------------------------------------------------------------------------------------------ abduction


@pytest.fixture(scope="module")
def abduction():
    return get_task("abduction", sandbox=SANDBOX)


def test_abduction_reference_inputs_score_1(abduction):
    rows = abduction.rows("train", 12, seed=0)
    assert rows == abduction.rows("train", 12, seed=0)
    assert all(row["program"] in row["question"] and row["output"] in row["question"] for row in rows)
    assert len(verified_sft_rows(abduction, rows)) == 12


def test_abduction_is_verified_by_running_the_program(abduction):
    row = {"program": "x = int(input())\nprint(x * x)\n", "output": "49", "input": "7\n"}
    assert abduction.score("<think>maybe <INPUT>6</INPUT></think> <INPUT>\n-7\n</INPUT>", row).correct
    assert abduction.score("<INPUT>7</INPUT>", row).correct
    assert abduction.score("<INPUT>\n```text\n7\n```\n</INPUT>", row).correct  # fenced inside the tags
    assert not abduction.score("<INPUT>```7```</INPUT>", row).correct  # not a fence: the backticks are the input
    wrong = abduction.score("<INPUT>6</INPUT>", row)
    assert wrong.reward == 0.0 and wrong.details["outcome"] == "wrong_answer"
    crash = abduction.score("<INPUT>seven</INPUT>", row)
    assert crash.reward == 0.0 and crash.details["outcome"] == "crash"
    missing = abduction.score("the input is 7", row)
    assert missing.reward == 0.0 and missing.details["message"] == "no <INPUT>"


def test_abduction_label_check_rejects_wrong_labels(abduction):
    rows = abduction.rows("train", 8, seed=1)
    swapped = [abduction.gold_completion(rows[(i + 1) % len(rows)]) for i in range(len(rows))]
    check = check_labels(abduction, rows, swapped)
    assert len(check.rejected) >= 7
    # a generator whose recorded output is wrong is caught too
    bad = dict(rows[0], output=rows[0]["output"] + "0")
    with pytest.raises(ValueError, match="SFT labels fail"):
        verified_sft_rows(abduction, [bad])


# ------------------------------------------------------------------------------------------------ deduction


@pytest.fixture(scope="module")
def deduction():
    return get_task("deduction", sandbox=SANDBOX)


def test_deduction_is_all_or_nothing_over_the_tests(deduction):
    rows = deduction.rows("train", 6, seed=0)
    assert rows != get_task("code", sandbox=SANDBOX, dataset="programs").rows("train", 6, seed=0)
    assert len(verified_sft_rows(deduction, rows)) == 6
    row = {"question": "", "tests": [{"input": "2\n", "output": "4"}, {"input": "3\n", "output": "9"}]}
    assert deduction.score("```python\nprint(int(input()) ** 2)\n```", row).reward == 1.0
    half = deduction.score("```python\nprint(int(input()) * 2)\n```", row)
    assert half.reward == 0.0 and half.details["passed"] == 1 and half.details["total"] == 2


def test_deduction_label_check_rejects_wrong_programs(deduction):
    rows = deduction.rows("train", 8, seed=2)
    others = [deduction.gold_completion(rows[(i + 1) % len(rows)]) for i in range(len(rows))]
    check = check_labels(deduction, rows, others)
    assert len(check.rejected) >= 7 and all(not score.correct for _, score in check.rejected)


def test_export_writes_task_rows_and_verified_sft_rows(tmp_path):
    import json

    from rcl.tasks.export import main

    main(["sat", str(tmp_path / "sat.jsonl"), "--split", "test", "--num", "3"])
    rows = [json.loads(line) for line in (tmp_path / "sat.jsonl").read_text().splitlines()]
    assert rows == get_task("sat").rows("test", 3, 0)
    main(["deduction", str(tmp_path / "sft.jsonl"), "--num", "4", "--seed", "2", "--sft", "true",
          "--kwargs", '{"sandbox": {"workers": 2}}'])
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    deduction = get_task("deduction", sandbox=SANDBOX)
    originals = deduction.rows("train", 4, 2)
    assert [set(row) for row in sft] == [{"question", "solution"}] * 4
    assert [row["solution"] for row in sft] == [deduction.gold_completion(row) for row in originals]


def test_program_families_can_be_chosen():
    rows = get_task("deduction", sandbox=SANDBOX, families=["quadratic"]).rows("train", 5)
    assert {row["family"] for row in rows} == {"quadratic"}
    assert {row["family"] for row in get_task("abduction", sandbox=SANDBOX, families=["digit_sum"]).rows("x", 3)} == {
        "digit_sum"}
    with pytest.raises(ValueError, match="unknown program families"):
        get_task("deduction", sandbox=SANDBOX, families=["nope"]).rows("train", 1)


# ------------------------------------------------------------------------------------------------ the Affine mixture


def test_mixture_rows_are_scored_by_their_own_task(tmp_path):
    import datasets

    from rcl.tasks.export import export

    kwargs = {"sat": {}, "abduction": {"sandbox": SANDBOX}, "deduction": {"sandbox": SANDBOX, "tests_per_problem": 2}}
    mixture = get_task("mixture", tasks=kwargs, weights={"sat": 2.0, "abduction": 1.0, "deduction": 1.0})
    rows = mixture.rows("train", 24, seed=0)
    assert rows == mixture.rows("train", 24, seed=0)
    counts = {name: sum(row["task"] == name for row in rows) for name in kwargs}
    assert sum(counts.values()) == 24 and counts["sat"] > counts["abduction"] > 0 and counts["deduction"] > 0
    assert set(mixture.fields) == {"task", "num_vars", "clauses", "planted", "program", "output", "input", "tests",
                                   "solution"}
    assert len({tuple(row) for row in rows}) == 1  # every row has every column
    golds = [mixture.gold_completion(row) for row in rows]
    scores = mixture.score_batch(golds, rows)
    assert all(score.correct for score in scores)
    assert [score.details["task"] for score in scores] == [row["task"] for row in rows]
    wrong = mixture.score_batch(golds[1:] + golds[:1], rows)
    assert sum(score.correct for score in wrong) <= 2
    assert mixture.score("x", dict(rows[0], task="nope")).details["outcome"] == "infra_error"
    # the exported rows load as one table (the data modules read them this way)
    export("mixture", str(tmp_path / "mix.jsonl"), num=24, kwargs={"tasks": kwargs})
    table = datasets.load_dataset("json", data_files=str(tmp_path / "mix.jsonl"), split="train")
    assert len(table) == 24 and set(mixture.fields) <= set(table.column_names)
    with pytest.raises(ValueError, match="weights"):
        get_task("mixture", tasks={"sat": {}}, weights={"abduction": 1.0})


def test_per_task_metrics_of_a_mixture_rollout(tiny_model_dir):
    from test_rollout import ScriptedEngine, settings
    from transformers import AutoTokenizer

    from rcl.prompts import PromptTemplates
    from rcl.rewards import get_reward
    from rcl.rl.rollout import RolloutRunner
    from rcl.tasks.mixture import per_task_means

    mixture = get_task("mixture", tasks={"sat": {}, "abduction": {"sandbox": SANDBOX, "families": ["quadratic"]}})
    rows = [row for row in mixture.rows("train", 12, seed=3)]
    sat_row = next(row for row in rows if row["task"] == "sat")
    abd_row = next(row for row in rows if row["task"] == "abduction")
    answers = {sat_row["question"]: mixture.gold_completion(sat_row), abd_row["question"]: "<INPUT>nope</INPUT>"}

    def reply(text, j):  # sample 0 answers right for SAT and wrong for abduction; sample 1 gives nothing
        return next((answer for question, answer in answers.items() if question[:200] in text), "") if j == 0 else ""

    policy = ScriptedEngine(AutoTokenizer.from_pretrained(tiny_model_dir), reply)
    runner = RolloutRunner(policy, None, PromptTemplates(), {"correctness": get_reward("correctness")},
                           {"correctness": 1.0}, mixture)
    rollout = runner.run([sat_row, abd_row], 0, settings(protocol="direct", num_generations=2))
    assert rollout.by_task == {
        "tasks/sat/count": 2.0, "tasks/sat/correct": 1.0, "tasks/sat/reward": 1.0,
        "tasks/abduction/count": 2.0, "tasks/abduction/correct": 0.0, "tasks/abduction/reward": 0.0,
    }
    assert per_task_means(rollout.by_task, "eval/") == {
        "eval/tasks/sat/accuracy": 0.5, "eval/tasks/sat/reward": 0.5,
        "eval/tasks/abduction/accuracy": 0.0, "eval/tasks/abduction/reward": 0.0,
    }
    assert per_task_means({"tasks/sat/count": 0.0, "tasks/sat/correct": 0.0, "tasks/sat/reward": 0.0}) == {}
