"""`python -m rcl score` and `score_records`: scored lines, the summary, task configs, and bad input that names its
file and line and writes nothing."""

import json
import re
from pathlib import Path

import pytest

from rcl.__main__ import main
from rcl.tasks import get_task
from rcl.tasks.health import VerifierFailure
from rcl.tasks.scoring import score_records

ROOT = Path(__file__).resolve().parents[1]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_records_adds_reward_correct_and_details():
    records = [{"id": 7, "ground_truth": "She has 3 + 4 = 7.\n#### 7", "completion": "3 + 4 = 7 apples.\n#### 7"},
               {"id": 8, "ground_truth": "#### 12", "completion": "The answer is 13."}]
    scored = score_records(get_task("gsm8k"), records)
    assert [(r["id"], r["reward"], r["correct"]) for r in scored] == [(7, 1.0, True), (8, 0.0, False)]
    assert scored[0]["details"] == {"gold": "7", "extracted": "7", "rule": "hashes", "match": "number",
                                    "outcome": "correct"}
    assert scored[1]["details"]["extracted"] == "13" and scored[1]["details"]["outcome"] == "wrong"
    assert records[0].keys() == {"id", "ground_truth", "completion"}, "the input records are not changed"


@pytest.mark.parametrize("task", ["arithmetic", "math", "gsm8k"])
def test_score_command_writes_scored_lines_and_a_summary(tmp_path, capsys, task):
    source = write_lines(tmp_path / "in.jsonl", [
        {"ground_truth": "85", "completion": "<solution>85</solution>"},
        "",
        {"ground_truth": "85", "completion": "<solution>84</solution>"},
        {"ground_truth": "85", "completion": "no idea"},
    ])
    out = tmp_path / "scored" / "out.jsonl"
    main(["score", "--task", task, "--input", str(source), "--output", str(out)])
    rows = read_lines(out)
    assert [(r["correct"], r["reward"], r["details"]["outcome"]) for r in rows] == [
        (True, 1.0, "correct"), (False, 0.0, "wrong"), (False, 0.0, "no_answer")]
    err = capsys.readouterr().err
    assert f"scored 3 completions with task '{task}': accuracy 0.333 (1/3)" in err
    assert "outcomes correct 1, no_answer 1, wrong 1; verifier errors 0, timeouts 0" in err


def test_score_reads_another_field_and_one_line_per_sample_of_a_list(tmp_path, capsys):
    """Outputs of other tools: `response` holding one completion, or several samples of one problem."""
    source = write_lines(tmp_path / "in.jsonl", [
        {"id": 1, "ground_truth": "4", "response": ["The answer is 4.", "The answer is 5.", "#### 4"]},
        {"id": 2, "ground_truth": "9", "response": "The answer is 9."},
    ])
    out = tmp_path / "out.jsonl"
    main(["score", "--task", "gsm8k", "--completion-field", "response", "--input", str(source), "--output", str(out)])
    rows = read_lines(out)
    assert [(r["id"], r.get("sample_index"), r["completion"], r["correct"]) for r in rows] == [
        (1, 0, "The answer is 4.", True), (1, 1, "The answer is 5.", False), (1, 2, "#### 4", True),
        (2, None, "The answer is 9.", True)]
    assert "response" not in rows[0] and rows[3]["response"] == "The answer is 9."
    assert "accuracy 0.750 (3/4)" in capsys.readouterr().err
    main(["score", "--task", "gsm8k", "--completion-field", "response", "--pass-at", "1", "2", "3",
          "--input", str(source), "--output", str(out)])
    err = capsys.readouterr().err
    # line 1: 2 of 3 right (pass@1 2/3, pass@2 1); line 2: 1 of 1 (pass@1 1; too few samples for k >= 2)
    assert "pass@1 0.833 [" in err and "over 2 problems" in err
    assert "pass@2 1.000 [1.000, 1.000] over 1 problems" in err and "pass@3 1.000" in err
    bad = write_lines(tmp_path / "bad.jsonl", [{"ground_truth": "4", "response": []}])
    with pytest.raises(SystemExit, match="needs a string 'response', or a non-empty list of strings"):
        main(["score", "--task", "gsm8k", "--completion-field", "response", "--input", str(bad), "--output",
              str(out)])


def test_score_takes_the_task_of_a_recipe_and_extra_kwargs(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [{"ground_truth": "5", "completion": "So x = 5."}])
    out = tmp_path / "out.jsonl"
    main(["score", "--config", str(ROOT / "lightning_configs" / "quickstart_direct.yaml"), "--input", str(source),
          "--output", str(out)])
    assert read_lines(out)[0]["correct"] is True  # arithmetic: the last number
    main(["score", "--task", "math", "--kwargs", "{strict: true}", "--input", str(source), "--output", str(out)])
    assert read_lines(out)[0]["details"]["outcome"] == "no_answer"  # strict: no answer marker


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"ground_truth": "1", "completion": "1"', "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected a JSON object, got list"),
        ('{"ground_truth": "1"}', "line 2: needs a string 'completion'"),
        ('{"completion": "1"}', "line 2: task 'math' needs the field(s) ground_truth"),
    ],
)
def test_a_bad_line_fails_with_file_and_line_and_writes_nothing(tmp_path, line, message):
    source = write_lines(tmp_path / "in.jsonl", [{"ground_truth": "1", "completion": "<solution>1</solution>"}, line])
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier result\n")
    with pytest.raises(SystemExit, match=re.escape(f"rcl score: {source} {message}")):
        main(["score", "--task", "math", "--input", str(source), "--output", str(out)])
    assert out.read_text() == "an earlier result\n", "the old output is left alone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"], "no temporary file is left"


def test_unknown_task_and_missing_task_are_one_line(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [{"ground_truth": "1", "completion": "1"}])
    with pytest.raises(SystemExit, match="rcl score: unknown task 'nope'; available: (.*, )?arithmetic, "):
        main(["score", "--task", "nope", "--input", str(source), "--output", str(tmp_path / "o.jsonl")])
    with pytest.raises(SystemExit, match="say which task"):
        main(["score", "--input", str(source), "--output", str(tmp_path / "o.jsonl")])


def test_a_verifier_that_mostly_fails_stops_scoring(tmp_path):
    records = [{"ground_truth": "\\frac{", "completion": "\\boxed{1}"}] * 20  # malformed references: errors
    with pytest.raises(VerifierFailure, match="failed on 20 of 20 checks"):
        score_records(get_task("math"), records)
    source = write_lines(tmp_path / "in.jsonl", records)
    with pytest.raises(SystemExit, match="rcl score: the verifier of task 'math' failed on 20 of 20"):
        main(["score", "--task", "math", "--input", str(source), "--output", str(tmp_path / "o.jsonl")])
    assert not (tmp_path / "o.jsonl").exists()
