"""`python -m rcl evaluate` end to end on tiny models: results.json, samples.jsonl, report.md and the plots; resume
after a kill; scoring twice gives the same results."""

import json
from pathlib import Path

import pytest
import yaml

import rcl.eval.cli
from rcl.__main__ import main
from rcl.tasks import Score, Task, available_tasks, register_task

TEST_TASK = "eval_test_parity"


class ParityTask(Task):
    """Test-only: correct when the completion has an even number of characters, so an untrained tiny model scores
    about half; the reward gives partial credit for odd lengths."""

    def rows(self, split, num=None, seed=0):
        rows = [{"id": f"{split}-{i}", "question": f"{i} + {seed} = ?", "ground_truth": str(i + seed)}
                for i in range(40)]
        return rows[:num]

    def score(self, completion, row):
        even = len(completion) % 2 == 0
        return Score(reward=1.0 if even else 0.25, correct=even, details={"length": len(completion)})


if TEST_TASK not in available_tasks():
    register_task(TEST_TASK)(ParityTask)


def recipe(out_dir: Path, models: list[dict], samples: int = 2, num_rows: int = 6, rows_per_chunk: int = 4,
           pass_k=(1, 2)) -> dict:
    return {
        "models": models,
        "student": {"name": "student", "model": {"model_name_or_path": "tiny-1m"}},
        "tasks": [{"name": TEST_TASK, "split": "test", "num_rows": num_rows, "seed": 0, "samples": samples}],
        "generation": {"temperature": 1.0, "max_completion_length": 6, "student_temperature": 1.0,
                       "student_max_tokens": 5},
        "teaching": {"max_probe_tokens": 3},
        "stats": {"ci_level": 0.8, "pass_k": list(pass_k), "bootstrap_resamples": 200, "bootstrap_seed": 0},
        "run": {"out_dir": str(out_dir), "phase": "all", "seed": 0, "device": "cpu", "rows_per_chunk": rows_per_chunk,
                "plots": True, "progress": False},
    }


def run_evaluate(tmp_path: Path, config: dict, *flags: str) -> None:
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["evaluate", "--config", str(path), *flags])


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tiny_model_dir) -> str:
    """A second model as a local HF folder: tiny-1m with a large random output layer, so that it samples other
    tokens (a freshly initialised tiny model is so close to uniform that another seed's weights sample the same)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("other") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    model.get_output_embeddings().weight.data.normal_(0.0, 1.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, other_model) -> Path:
    tmp = tmp_path_factory.mktemp("eval")
    models = [
        {"name": "tiny", "model": {"model_name_or_path": "tiny-1m"}, "protocols": ["direct", "adaptive_teaching"]},
        {"name": "other", "model": {"model_name_or_path": other_model}, "protocols": ["adaptive_teaching"]},
    ]
    run_evaluate(tmp, recipe(tmp / "out", models))
    return tmp / "out"


def test_results_json_follows_the_schema(evaluated):
    results = json.loads((evaluated / "results.json").read_text())
    assert results["schema_version"] == 1
    assert results["git_sha"] and len(results["templates_sha256"]) == 64
    assert len(results["rows_sha256"][TEST_TASK]) == 64
    assert results["config"]["models"][0]["name"] == "tiny" and results["config"]["run"]["rows_per_chunk"] == 4
    keys = [(e["model"], e["task"], e["protocol"]) for e in results["results"]]
    assert keys == [("tiny", TEST_TASK, "direct"), ("tiny", TEST_TASK, "adaptive_teaching"),
                    ("other", TEST_TASK, "adaptive_teaching")]
    samples = [json.loads(line) for line in (evaluated / results["samples_file"]).read_text().splitlines()]
    assert len(samples) == 3 * 6 * 2
    for e in results["results"]:
        mine = [s for s in samples if (s["model"], s["protocol"]) == (e["model"], e["protocol"])]
        correct = sum(s["correct"] for s in mine)
        assert (e["n"], e["problems"]) == (12, 6)
        assert e["accuracy"] == pytest.approx(correct / 12)
        assert 0 <= e["ci_low"] <= e["accuracy"] <= e["ci_high"] <= 1 and e["ci_level"] == 0.8
        assert e["success_rate"] == 1.0  # every reward is 1 or 0.25: all non-zero
        assert e["mean_score"] == pytest.approx((correct + 0.25 * (12 - correct)) / 12)
        assert e["mean_tokens"] == pytest.approx(sum(s["tokens"] for s in mine) / 12)
        assert set(e["pass_at_k"]) == {"1", "2"} and e["pass_at_k"]["1"] == pytest.approx(e["accuracy"])
        assert e["pass_at_k"]["2"] >= e["pass_at_k"]["1"]
        for s in mine:  # the parity verifier really judged what was generated
            assert s["correct"] == (s["details"]["length"] % 2 == 0)
    taught = results["results"][1]
    for key in ("baseline_accuracy", "with_teaching_accuracy", "delta", "delta_ci_low", "delta_ci_high", "ndr",
                "ndr_ci_low", "ndr_ci_high", "tes"):
        assert key in taught
    alone = [s["baseline_correct"] for s in samples if (s["model"], s["protocol"]) == ("tiny", "adaptive_teaching")]
    assert taught["baseline_accuracy"] == pytest.approx(sum(alone) / 12)
    assert taught["delta"] == pytest.approx(taught["with_teaching_accuracy"] - taught["baseline_accuracy"])
    assert taught["delta_ci_low"] <= taught["delta"] <= taught["delta_ci_high"]
    assert taught["student"] == "student"
    # the request seed does not depend on the teacher: the same student, alone, gives the same samples
    other = results["results"][2]
    assert other["baseline_accuracy"] == taught["baseline_accuracy"]
    assert [d["model"] for d in results["paired_differences"]] == ["other"]
    assert results["aggregates"][0]["accuracy"] == results["results"][0]["accuracy"]


def test_generation_lines_carry_what_the_issue_lists(evaluated):
    lines = [json.loads(line) for line in
             (evaluated / "generations" / f"tiny__{TEST_TASK}__adaptive_teaching.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    first = lines[0]
    for key in ("model", "task", "row_id", "sample_index", "seed", "tokens", "completion", "baseline_completion",
                "teaching", "teacher_completion", "student"):
        assert key in first
    assert {(line["row_id"], line["sample_index"]) for line in lines} == {(f"test-{i}", j) for i in range(6)
                                                                          for j in range(2)}
    assert len({line["seed"] for line in lines}) == 2  # one per chunk of 4 rows
    other = [json.loads(line) for line in
             (evaluated / "generations" / f"other__{TEST_TASK}__adaptive_teaching.jsonl").read_text().splitlines()]
    assert [o["baseline_completion"] for o in other] == [line["baseline_completion"] for line in lines]
    assert [o["teacher_completion"] for o in other] != [line["teacher_completion"] for line in lines]


def test_report_and_plots_are_written(evaluated):
    report = (evaluated / "report.md").read_text()
    assert "| tiny | eval_test_parity | direct | 12 |" in report
    assert "Teaching: student alone against teacher + student" in report and "Paired differences" in report
    for name in ("accuracy.png", "pass_at_k.png", "teaching.png", "pareto.png"):
        assert (evaluated / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report


def test_scoring_twice_gives_identical_results(evaluated, tmp_path):
    results = (evaluated / "results.json").read_text()
    samples = (evaluated / "samples.jsonl").read_text()
    config = json.loads(results)["config"]
    config["run"]["phase"] = "score"
    config["run"]["plots"] = False
    run_evaluate(tmp_path, config)
    assert (evaluated / "samples.jsonl").read_text() == samples
    again = json.loads((evaluated / "results.json").read_text())
    first = json.loads(results)
    assert again["results"] == first["results"] and again["paired_differences"] == first["paired_differences"]


def test_compare_two_results_files(evaluated, tmp_path, capsys):
    copies = []
    for name in ("run_a", "run_b"):
        (tmp_path / name).mkdir()
        copies.append(tmp_path / name / "results.json")
        copies[-1].write_text((evaluated / "results.json").read_text())
    main(["evaluate", "compare", *map(str, copies), "--out_dir", str(tmp_path / "cmp"), "--min_samples", "1"])
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    names = list(result["systems"])
    assert names[:3] == ["run_a: tiny (direct)", "run_a: tiny (adaptive teaching)", "run_a: other (adaptive teaching)"]
    assert len(names) == 6
    for a, b in result["dominates"]:  # a copy never dominates its twin
        assert a.split(": ", 1)[1] != b.split(": ", 1)[1]
    twin = [d for d in result["deltas"] if d["system"] == "run_b: tiny (direct)"]
    assert twin[0]["delta"] == 0 and twin[0]["ci_low"] < 0 < twin[0]["ci_high"]
    assert (tmp_path / "cmp" / "pareto.png").exists()
    assert "Pareto dominance" in (tmp_path / "cmp" / "compare.md").read_text()
    with pytest.raises(SystemExit):
        main(["evaluate", "compare", str(tmp_path / "missing.json")])


def count_generated(monkeypatch) -> list[int]:
    counts = []
    original = rcl.eval.cli.run_jobs

    def counting(*args, **kwargs):
        counts.append(original(*args, **kwargs))
        return counts[-1]

    monkeypatch.setattr(rcl.eval.cli, "run_jobs", counting)
    return counts


def test_a_killed_generate_phase_resumes_without_redoing_finished_samples(tmp_path, tiny_model_dir, monkeypatch):
    counts = count_generated(monkeypatch)
    models = [{"name": "tiny", "model": {"model_name_or_path": "tiny-1m"}, "protocols": ["direct"]}]
    config = recipe(tmp_path / "out", models, samples=3, num_rows=10, rows_per_chunk=4)
    config["run"]["phase"] = "generate"
    run_evaluate(tmp_path, config)
    path = tmp_path / "out" / "generations" / f"tiny__{TEST_TASK}__direct.jsonl"
    full = path.read_text()
    assert counts == [30] and len(full.splitlines()) == 30  # chunks of 4, 4 and 2 rows, 3 samples each
    # a kill in the middle of the second chunk's write: 12 whole lines of chunk 0, 2 of chunk 1 and a cut line
    lines = full.splitlines(keepends=True)
    path.write_text("".join(lines[:14]) + lines[14][:20])
    run_evaluate(tmp_path, config)
    assert counts[-1] == 18  # chunks 1 and 2 again; chunk 0 kept
    assert path.read_text() == full  # the same seeds give the same samples
    run_evaluate(tmp_path, config)
    assert counts[-1] == 18  # nothing left to do: run_jobs is not called again
    assert len(counts) == 2


def test_changed_settings_are_refused_and_scoring_needs_whole_files(tmp_path, tiny_model_dir):
    models = [{"name": "tiny", "model": {"model_name_or_path": "tiny-1m"}, "protocols": ["direct"]}]
    config = recipe(tmp_path / "out", models, samples=1, num_rows=2, rows_per_chunk=1, pass_k=(1,))
    config["run"]["phase"] = "generate"
    run_evaluate(tmp_path, config)
    path = tmp_path / "out" / "generations" / f"tiny__{TEST_TASK}__direct.jsonl"
    path.write_text(path.read_text().splitlines(keepends=True)[0])
    config["run"]["phase"] = "score"
    with pytest.raises(SystemExit, match="lacks 1 samples"):
        run_evaluate(tmp_path, config)
    config["generation"]["temperature"] = 0.5
    with pytest.raises(SystemExit, match="generated with other settings"):
        run_evaluate(tmp_path, config)


def test_refusals_before_any_model_loads(tmp_path):
    models = [{"name": "a", "model": {"model_name_or_path": "tiny-1m"}, "protocols": ["direct"]}]
    config = recipe(tmp_path / "out", models, samples=2, pass_k=(1, 4))
    with pytest.raises(SystemExit, match="too few for pass@4"):
        run_evaluate(tmp_path, config)
    config = recipe(tmp_path / "out", models + models)
    with pytest.raises(SystemExit, match="repeated: a"):
        run_evaluate(tmp_path, config)
    config = recipe(tmp_path / "out", [{**models[0], "protocols": ["adaptive_teaching"]}])
    del config["student"]
    with pytest.raises(SystemExit, match="needs `student:`"):
        run_evaluate(tmp_path, config)


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    models = [{"name": "a", "model": {"model_name_or_path": "tiny-1m"}, "protocols": ["direct"]}]
    with pytest.raises(SystemExit):
        run_evaluate(tmp_path, recipe(tmp_path / "out", models), "--run.out_d", "x")
    err = capsys.readouterr().err
    assert "unrecognized arguments: --run.out_d x" in err and "did you mean --run.out_dir?" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def test_a_run_folder_stands_for_its_export_and_a_retrained_model_is_refused(tmp_path, other_model):
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(other_model, run / "hf_model")
    models = [{"name": "m", "model": {"model_name_or_path": str(run)}, "protocols": ["direct"]}]
    config = recipe(tmp_path / "out", models, samples=1, num_rows=2, rows_per_chunk=2, pass_k=(1,))
    config["run"]["phase"] = "generate"
    run_evaluate(tmp_path, config)
    meta = json.loads((tmp_path / "out" / "generations" / f"m__{TEST_TASK}__direct.meta.json").read_text())
    assert [w[0] for w in meta["model"]["weights"]] == ["config.json", "model.safetensors"]
    weights = run / "hf_model" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # "retrained"
    with pytest.raises(SystemExit, match="generated with other settings"):
        run_evaluate(tmp_path, config)


def test_models_behind_servers_evaluate_like_in_process_ones(tmp_path, tiny_model_dir):
    from serving_support import server_env, start_server, stop_server

    proc, url = start_server(tiny_model_dir, server_env())
    try:
        models = [{"name": "local", "model": {"model_name_or_path": "tiny-1m"}, "protocols": ["direct"]}]
        for api in ("rcl", "openai"):
            models.append({"name": f"served_{api}", "model": {"model_name_or_path": tiny_model_dir},
                           "engine": {"backend": "server", "urls": [url], "api": api}, "protocols": ["direct"]})
        run_evaluate(tmp_path, recipe(tmp_path / "out", models, samples=2, num_rows=3, rows_per_chunk=3))
    finally:
        stop_server(proc)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["model"] for e in results["results"]] == ["local", "served_rcl", "served_openai"]
    texts = {}
    for name in ("local", "served_rcl", "served_openai"):
        path = tmp_path / "out" / "generations" / f"{name}__{TEST_TASK}__direct.jsonl"
        texts[name] = [json.loads(line)["completion"] for line in path.read_text().splitlines()]
        assert len(texts[name]) == 6
    assert texts["served_rcl"] == texts["local"] == texts["served_openai"]  # one seed per request, one sampler


def test_the_quickstart_recipe_runs_on_tiny_models(tmp_path, tiny_model_dir):
    """eval_quickstart.yaml as shipped (arithmetic task, its data module, both protocols), with tiny-1m in place of
    the trained models, 3 problems and short budgets."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "lightning_configs" / "eval_quickstart.yaml")
                            .read_text())
    for model in [*config["models"], config["student"]]:
        model["model"]["model_name_or_path"] = "tiny-1m"
    config["tasks"][0]["num_rows"] = 3
    config["generation"].update(max_completion_length=6, student_max_tokens=4)
    config["teaching"]["max_probe_tokens"] = 2
    config["run"].update(out_dir=str(tmp_path / "out"), progress=False)
    run_evaluate(tmp_path, config)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(e["model"], e["protocol"], e["n"]) for e in results["results"]] == [
        ("student_sft", "direct", 12), ("teacher_sft", "adaptive_teaching", 12), ("teacher_rl", "adaptive_teaching", 12)]
    assert set(results["results"][0]["pass_at_k"]) == {"1", "2", "4"}
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert all("outcome" in s["details"] for s in samples)  # scored by the arithmetic task's verifier
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"accuracy.png", "pass_at_k.png", "teaching.png",
                                                                   "pareto.png"}


def test_every_answer_is_scored_once_by_the_score_phase_only(tmp_path, tiny_model_dir, monkeypatch):
    """The generate phase's rollout used to score each answer too, and the score phase scored it again (for code
    tasks: every program's tests ran twice)."""
    calls = {"n": 0}
    real = ParityTask.score

    def counted(self, completion, row):
        calls["n"] += 1
        return real(self, completion, row)

    monkeypatch.setattr(ParityTask, "score", counted)
    models = [{"name": "tiny", "model": {"model_name_or_path": "tiny-1m"}, "protocols": ["direct", "adaptive_teaching"]}]
    config = recipe(tmp_path / "out", models, samples=2, num_rows=3)
    config["run"]["plots"] = False
    run_evaluate(tmp_path, config)
    # direct: 3 rows x 2 answers; adaptive: 3 rows x (2 student-alone answers + 2 teachings x 1 answer)
    assert calls["n"] == 3 * 2 + 3 * (2 + 2)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results, "the score phase still scored and wrote its results"
