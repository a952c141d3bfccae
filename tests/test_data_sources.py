"""Loading rows from local files and folders, and the one-line errors for bad input."""

import json
import subprocess
import sys

import datasets
import pytest

from data_modules import DataError, TeacherStudentDataModule
from data_modules.schemas import canonicalize
from data_modules.sources import check_jsonl, load_rows

ROWS = [{"question": "What is 1+2?", "solution": "<solution>3</solution>", "answer": "3"},
        {"question": "What is 2+2?", "solution": "<solution>4</solution>", "answer": "4"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet", ".csv"])
def test_local_file_formats_load_the_same_rows(tmp_path, ext):
    path = tmp_path / f"rows{ext}"
    table = datasets.Dataset.from_list(ROWS)
    if ext == ".jsonl":
        write_jsonl(path, ROWS)
    elif ext == ".json":
        path.write_text(json.dumps(ROWS))
    elif ext == ".parquet":
        table.to_parquet(str(path))
    else:
        table.to_csv(str(path), index=False)
    loaded = load_rows(str(path))
    assert loaded.to_list() == ROWS


def test_folder_with_data_files(tmp_path):
    (tmp_path / "training").mkdir()
    write_jsonl(tmp_path / "training" / "sft.jsonl", ROWS)
    write_jsonl(tmp_path / "training" / "other.jsonl", ROWS[:1])
    loaded = load_rows(str(tmp_path), data_files="training/sft.jsonl")
    assert loaded["question"] == [r["question"] for r in ROWS]


def test_a_folder_with_a_hidden_empty_file_loads_its_data(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    (tmp_path / ".gitkeep").write_text("")
    assert load_rows(str(tmp_path))["question"] == [r["question"] for r in ROWS]
    (tmp_path / "EMPTY.JSONL").write_text("")  # an empty data file is still refused, whatever the suffix's case
    with pytest.raises(DataError, match="EMPTY.JSONL' is empty"):
        load_rows(str(tmp_path))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"question": "x", oops}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 3: not valid JSON"):
        load_rows(str(path))


def test_malformed_jsonl_inside_a_folder_is_caught_too(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "sft.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"sft.jsonl line 1: expected a JSON object, got array"):
        load_rows(str(tmp_path), data_files="training/sft.jsonl")


def test_jsonl_type_change_names_column_and_line(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [ROWS[0], {**ROWS[1], "question": 7}])
    with pytest.raises(DataError, match=r"mixed.jsonl line 2: column 'question' expected string \(as on line 1\), got number"):
        check_jsonl(path)


def test_empty_file_and_empty_table(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_rows(str(tmp_path / "empty.jsonl"))
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="is empty"):
        load_rows(str(tmp_path / "blank.jsonl"))


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "rows.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"unsupported data file extension '.txt'"):
        load_rows(str(tmp_path / "rows.txt"))
    with pytest.raises(DataError, match="data file not found"):
        load_rows(str(tmp_path / "nope.jsonl"))


def test_missing_column_names_it_and_lists_present_columns():
    table = datasets.Dataset.from_list([{"prompt": "q", "answer": "1"}])
    with pytest.raises(DataError) as err:
        canonicalize(table, "generic")
    message = str(err.value)
    assert message == "missing column 'question' (field 'question' of schema generic); columns present: prompt, answer"


def test_column_mapping_renames_and_keeps_optional_fields():
    table = datasets.Dataset.from_list([{"q": "What?", "sol": "S", "hint": "H", "extra": 1}])
    rows = canonicalize(table, "generic", {"question": "q", "solution": "sol", "teaching": "hint"})
    assert rows.to_list() == [{"question": "What?", "solution": "S", "teaching": "H"}]
    with pytest.raises(DataError, match=r"missing column 'approx' \(mapped to 'approach'\)"):
        canonicalize(table, "generic", {"question": "q", "solution": "sol", "approach": "approx"})
    # a mapped field outside the schema is a task's own field: kept, with its own type
    rows = canonicalize(table, "generic", {"question": "q", "solution": "sol", "weight": "extra"})
    assert rows.to_list() == [{"question": "What?", "solution": "S", "weight": 1}]
    with pytest.raises(DataError, match=r"missing column 'nope' \(field 'bogus' that the task reads\)"):
        canonicalize(table, "generic", {"question": "q", "solution": "sol", "bogus": "nope"})


def test_a_mapped_column_is_not_taken_again_by_the_field_of_its_name():
    # GSM8K-style: the solution lives in a column called "answer", which is also an optional generic field's name
    table = datasets.Dataset.from_list([{"question": "What is 2+2?", "answer": "2+2=4 #### 4"}])
    rows = canonicalize(table, "generic", {"solution": "answer"})
    assert rows.to_list() == [{"question": "What is 2+2?", "solution": "2+2=4 #### 4"}]
    with pytest.raises(DataError, match="column 'question' is mapped to both 'question' and 'solution'"):
        canonicalize(table, "generic", {"question": "question", "solution": "question"})
    swapped = datasets.Dataset.from_list([{"answer": "q", "solution": "s"}])
    with pytest.raises(DataError, match="column 'solution' is mapped to 'question', so field 'solution' needs a colu"):
        canonicalize(swapped, "generic", {"question": "solution"})


def test_wrong_type_names_column_row_and_expected_type():
    table = datasets.Dataset.from_list([{"prompt": "a", "ground_truth": 1}, {"prompt": "b", "ground_truth": 2}])
    with pytest.raises(DataError, match=r"^column 'ground_truth' row 0: expected a string, got int 1$"):
        canonicalize(table, "atlas_rl")
    table = datasets.Dataset.from_list([{"prompt": "a", "ground_truth": "1"}, {"prompt": None, "ground_truth": "2"}])
    with pytest.raises(DataError, match=r"^column 'prompt' row 1: expected a string, got None$"):
        canonicalize(table, "atlas_rl")
    table = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "user", "content": None}]}])
    with pytest.raises(DataError, match=r"^column 'messages' row 1: expected a list of \{role, content\} strings"):
        canonicalize(table, "messages")


def test_wrong_message_shape_is_reported():
    table = datasets.Dataset.from_list([{"messages": "not a list"}])
    with pytest.raises(DataError, match=r"column 'messages' row 0: expected a list of \{role, content\} strings"):
        canonicalize(table, "messages")


def test_cli_prints_data_errors_as_one_line(tmp_path, repo_env, tiny_model_dir):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"prompt": "q", "answer": "1"}])
    proc = subprocess.run(
        [sys.executable, "-m", "rcl", "fit", "--config", "lightning_configs/quickstart_student_sft.yaml",
         "--data.init_args.dataset", str(path), "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false",
         "--trainer.default_root_dir", str(tmp_path / "run"), "--model.init_args.model_name_or_path", tiny_model_dir],
        cwd=repo_env["PYTHONPATH"].split(":")[0], env=repo_env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "rcl: missing column 'question' (field 'question' of schema generic); columns present: prompt, answer"
    )
    assert "Traceback" not in proc.stderr


def test_data_module_reports_bad_settings():
    with pytest.raises(DataError, match="val_size must be"):
        TeacherStudentDataModule(val_size=1.5).canonical_rows()
