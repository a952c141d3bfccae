"""TeacherStudentDataModule: schemas end to end, the seeded split shared by SFT and RL, and the RL dataset API."""

import json
import logging
import zlib

import pytest

from data_modules import DataError, TeacherStudentDataModule
from data_modules.sft_examples import IGNORE_INDEX, in_share
from rcl.tasks import get_task
from rcl.tasks.code import called_first


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_split_is_seeded_disjoint_and_shared_by_rl(tmp_path):
    rows = [{"question": f"What is {i}+1?", "solution": f"<solution>{i + 1}</solution>"} for i in range(50)]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    a = TeacherStudentDataModule(dataset=path, schema="generic", val_size=0.2, seed=3)
    b = TeacherStudentDataModule(dataset=path, schema="generic", val_size=0.2, seed=3)
    c = TeacherStudentDataModule(dataset=path, schema="generic", val_size=0.2, seed=4)
    train, val = a.split_rows()
    assert len(train) == 40 and len(val) == 10
    assert set(train["question"]).isdisjoint(val["question"])
    assert list(b.split_rows()[1]["question"]) == list(val["question"])
    assert list(c.split_rows()[1]["question"]) != list(val["question"])
    rl_val = a.rl_dataset("val")
    assert rl_val.column_names == ["question", "ground_truth"]
    assert list(rl_val["question"]) == list(val["question"])
    # No answer column: the ground truth is the solution text.
    assert list(rl_val["ground_truth"]) == list(val["solution"])


def test_rl_dataset_from_atlas_rl_needs_no_tokenizer(tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", [{"prompt": f"Q{i}", "ground_truth": str(i), "extra": 1} for i in range(10)])
    dm = TeacherStudentDataModule(dataset=path, schema="atlas_rl", val_size=2, seed=0)
    train, val = dm.rl_dataset("train"), dm.rl_dataset("val")
    assert train.column_names == val.column_names == ["question", "ground_truth"]
    assert len(train) == 8 and len(val) == 2
    pairs = list(zip(train["question"], train["ground_truth"])) + list(zip(val["question"], val["ground_truth"]))
    assert sorted(pairs) == sorted((f"Q{i}", str(i)) for i in range(10))
    assert dm.tokenizer is None


def test_rl_dataset_generic_prefers_the_answer_column():
    dm = TeacherStudentDataModule(dataset="synthetic", schema="generic", synthetic_size=30, val_size=0.1)
    rl = dm.rl_dataset("train")
    assert rl.column_names == ["question", "ground_truth"]
    for question, truth in zip(rl["question"], rl["ground_truth"]):
        a, b = question.removeprefix("What is ").removesuffix("?").split("+")
        assert truth == str(int(a) + int(b))


def test_rl_dataset_refuses_schemas_without_prompts():
    with pytest.raises(DataError, match="schema atlas_sft has no RL prompts"):
        TeacherStudentDataModule(schema="atlas_sft").rl_dataset("train")


def test_rl_rows_carry_the_tasks_own_fields_through_unchanged_and_mapped(tmp_path):
    rows = [{"prompt": f"Write f{i}", "ground_truth": "", "test_list": [f"assert f{i}() == {i}"], "entry": f"f{i}"}
            for i in range(10)]
    path = write_jsonl(tmp_path / "code.jsonl", rows)
    dm = TeacherStudentDataModule(dataset=path, schema="atlas_rl", val_size=2, seed=0,
                                  columns={"asserts": "test_list", "entry_point": "entry"})
    plain = dm.rl_dataset("train")
    train = dm.rl_dataset("train", fields=("asserts", "entry_point"))
    assert train.column_names == ["question", "ground_truth", "asserts", "entry_point"]
    assert list(train["question"]) == list(plain["question"]), "the split does not depend on the extra fields"
    for row in train:
        i = int(row["question"].removeprefix("Write f"))
        assert row["asserts"] == [f"assert f{i}() == {i}"] and row["entry_point"] == f"f{i}"
    with pytest.raises(DataError, match="missing column 'setup' \\(field 'setup' that the task reads\\)"):
        dm.rl_dataset("train", fields=("setup",))


def test_an_mbpp_file_mapped_through_columns_is_scored_by_its_asserts(tmp_path):
    """MBPP's own column names (text, code, test_list), mapped onto the code task's asserts format."""
    rows = [{"task_id": i, "text": f"Write a function that returns {i} more than its argument.",
             "code": f"def plus_{i}(x):\n    return x + {i}\n", "test_setup_code": "",
             "test_list": [f"assert plus_{i}(1) == {i + 1}", f"assert plus_{i}(-{i}) == 0"]} for i in range(6)]
    path = write_jsonl(tmp_path / "mbpp.jsonl", rows)
    task = get_task("code", test_format="asserts", sandbox={"workers": 2})
    dm = TeacherStudentDataModule(dataset=path, schema="generic", val_size=0,
                                  columns={"question": "text", "solution": "code", "asserts": "test_list"})
    train = dm.rl_dataset("train", fields=task.fields)
    assert len(train) == 6 and "plus_" in task.prompt(train[0]) and "assert plus_" in task.prompt(train[0])
    scores = task.score_batch([task.gold_completion(row) for row in train], list(train))
    assert [s.details["passed"] for s in scores] == [2] * 6
    names = [called_first(row["asserts"]) for row in train]
    off_by_one = [f"```python\ndef {name}(x):\n    return x + 1\n```" for name in names]
    assert [s.correct for s in task.score_batch(off_by_one, list(train))] == [name == "plus_1" for name in names]


def test_task_schema_needs_no_ground_truth_unless_the_task_reads_it(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": f"Q{i}", "tests": ["ok"]} for i in range(6)])
    dm = TeacherStudentDataModule(dataset=path, schema="task", val_size=0)
    assert dm.rl_dataset("train", fields=("tests",)).column_names == ["question", "tests"]
    with pytest.raises(DataError, match="the task reads ground_truth"):
        dm.rl_dataset("train")


def test_messages_rl_rows_prompt_with_the_last_user_turn(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}"}],
             "ground_truth": str(i), "dataset": "gsm8k"} for i in range(5)]
    dm = TeacherStudentDataModule(dataset=write_jsonl(tmp_path / "m.jsonl", rows), schema="messages_rl", val_size=0)
    rl = dm.rl_dataset("train")
    assert rl.column_names == ["question", "ground_truth"]
    assert sorted(zip(rl["question"], rl["ground_truth"])) == [(f"Q{i}", str(i)) for i in range(5)]


def test_synthetic_word_problems_give_gsm8k_style_rows():
    dm = TeacherStudentDataModule(schema="generic", synthetic_kind="word_problems", synthetic_size=40, val_size=0)
    rows = dm.canonical_rows()
    rl = dm.rl_dataset("train")
    for row, truth in zip(rows, rl["ground_truth"]):
        assert row["solution"].endswith(f"#### {row['answer']}") and truth == row["answer"]
    assert TeacherStudentDataModule(schema="atlas_rl", synthetic_kind="word_problems", synthetic_size=5,
                                    val_size=0).rl_dataset("train")["ground_truth"][0].count("####") == 1


def test_synthetic_generic_rows_carry_teaching_and_approach():
    rows = TeacherStudentDataModule(schema="generic", synthetic_size=20).canonical_rows()
    assert set(rows.column_names) == {"question", "solution", "answer", "teaching", "approach"}
    for question, approach, teaching in zip(rows["question"], rows["approach"], rows["teaching"]):
        a, b = question.removeprefix("What is ").removesuffix("?").split("+")
        carries = int(a) % 10 + int(b) % 10 >= 10
        assert approach == ("not sure" if carries else "add the ones, then the tens")
        assert teaching.endswith(f"carry {int(carries)}")


@pytest.mark.parametrize(
    "schema,kinds,per_row", [("atlas_sft", ["baseline"], 1), ("generic", ["baseline", "with_teaching", "probe"], 3),
                             ("generic", ["probe"], 1), ("messages", ["baseline"], 1)]
)
def test_each_schema_tokenizes_with_masked_prompts(tiny_model_dir, schema, kinds, per_row):
    dm = TeacherStudentDataModule(schema=schema, synthetic_size=30, val_size=10, tokenizer_name_or_path=tiny_model_dir,
                                  student_examples=kinds, batch_size=4)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (20 * per_row, 10 * per_row)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        target = labels[labels != IGNORE_INDEX]
        assert len(target) > 0 and target[-1] == dm.tokenizer.eos_token_id
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        assert dm.tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")
        assert (labels[mask == 0] == IGNORE_INDEX).all() and (ids[mask == 0] == dm.pad_id).all()


def test_student_examples_need_their_columns(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "solution": "s"}] * 4)
    dm = TeacherStudentDataModule(dataset=path, schema="generic", val_size=0, tokenizer_name_or_path=tiny_model_dir,
                                  student_examples=["baseline", "with_teaching"])
    with pytest.raises(DataError, match="student_examples 'with_teaching' needs a 'teaching' column; columns present: question, solution"):
        dm.setup("fit")


def test_atlas_rl_has_no_sft_target(tiny_model_dir):
    dm = TeacherStudentDataModule(schema="atlas_rl", synthetic_size=10, val_size=0, tokenizer_name_or_path=tiny_model_dir)
    with pytest.raises(DataError, match="schema atlas_rl has no SFT target"):
        dm.setup("fit")


def test_sft_needs_a_tokenizer():
    with pytest.raises(DataError, match="tokenizer_name_or_path"):
        TeacherStudentDataModule(synthetic_size=10).setup("fit")


def test_examples_whose_prompt_fills_max_length_are_dropped_and_reported(tmp_path, tiny_model_dir, caplog):
    rows = [{"question": "What is 1+2?", "solution": "3"}] * 2 + [{"question": "long " * 200, "solution": "3"}] * 2
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    dm = TeacherStudentDataModule(dataset=path, schema="generic", val_size=0, tokenizer_name_or_path=tiny_model_dir,
                                  max_length=64, overlong="truncate")
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert len(dm.train_set) == 2
    assert "2 of 4 train examples dropped: no target token left within max_length 64" in caplog.text


def test_baseline_share_drops_baseline_examples_of_training_rows_only(tiny_model_dir):
    kinds = ["baseline", "with_teaching", "probe"]
    dm = TeacherStudentDataModule(schema="generic", synthetic_size=400, val_size=100, tokenizer_name_or_path=tiny_model_dir,
                                  student_examples=kinds, baseline_share=0.25, batch_size=4)
    dm.setup("fit")
    train_rows, val_rows = dm.split_rows()
    kept = [q for q in train_rows["question"] if in_share(q, 0.25)]
    assert 0 < len(kept) < 300  # crc32 spreads the 300 questions: about a quarter are kept
    assert len(dm.train_set) == 2 * 300 + len(kept)
    assert len(dm.val_set) == 3 * 100
    texts = [dm.tokenizer.decode(e["input_ids"]) for e in dm.train_set]
    baseline_prompts = [t for t in texts if "Put the final answer" in t and "Guidance:" not in t]
    assert sorted(p.split("\n")[1] for p in baseline_prompts) == sorted(kept)


def test_in_share_is_stable_and_monotone_in_the_share():
    keys = [f"What is {a}+{a + 3}?" for a in range(200)]
    assert [in_share(k, 0.0) for k in keys] == [False] * 200 and all(in_share(k, 1.0) for k in keys)
    half = {k for k in keys if in_share(k, 0.5)}
    assert {k for k in keys if in_share(k, 0.2)} <= half and 70 < len(half) < 130
    assert in_share("What is 12+34?", 0.5) == (zlib.crc32(b"What is 12+34?") < 2**31)


def test_baseline_share_outside_0_1_is_refused(tiny_model_dir):
    dm = TeacherStudentDataModule(schema="generic", synthetic_size=20, tokenizer_name_or_path=tiny_model_dir,
                                  baseline_share=1.5)
    with pytest.raises(DataError, match=r"baseline_share must be in \[0, 1\], got 1.5"):
        dm.setup("fit")
