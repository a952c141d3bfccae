import json

import pytest

from data_modules.synthetic import (
    generate_problems,
    make_problem,
    to_rl_rows,
    to_sft_rows,
    write_synthetic_dataset,
)


def test_problem_answer_and_teaching_are_exact():
    p = make_problem(47, 38)
    assert p == {
        "question": "What is 47+38?",
        "answer": "85",
        "difficulty": 2,
        "teaching": "ones 7+8=15, carry 1",
        "diagnosis": "carry",
    }
    assert make_problem(3, 4)["teaching"] == "ones 3+4=7, carry 0"


def test_generation_is_deterministic_distinct_and_levelled():
    a, b = generate_problems(300, seed=1), generate_problems(300, seed=1)
    assert a == b and a != generate_problems(300, seed=2)
    assert len({p["question"] for p in a}) == 300
    assert {p["difficulty"] for p in a} == {1, 2, 3}
    assert {p["difficulty"] for p in generate_problems(50, seed=0, levels=[2])} == {2}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="only 100 distinct problems"):
        generate_problems(101, levels=[1])
    with pytest.raises(ValueError, match="levels"):
        generate_problems(5, levels=[4])


def test_schemas_and_files(tmp_path):
    problems = generate_problems(20, seed=0)
    sft = to_sft_rows(problems)
    assert set(sft[0]) == {"problem_text", "student_approach", "teacher_diagnosis", "teacher_teaching"}
    assert to_rl_rows(problems)[0] == {"prompt": problems[0]["question"], "ground_truth": problems[0]["answer"]}
    files = write_synthetic_dataset(tmp_path, num=20, seed=0)
    lines = files["rl"].read_text().splitlines()
    assert len(lines) == 20 and json.loads(lines[0])["ground_truth"] == problems[0]["answer"]
