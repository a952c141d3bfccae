import json

import pytest

from experiments.teaching_study import compare_studies, main, rl_changes


def test_rl_changes_pool_seeds_per_problem():
    before = [0.0, 0.0, 1.0, 1.0]
    afters = [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    changes = rl_changes(before, afters)
    assert [c["value"] for c in changes["per_seed"]] == [pytest.approx(0.25), pytest.approx(0.25)]
    # pooled after: [1, .5, 1, .5] - before -> [1, .5, 0, -.5], mean 0.25
    assert changes["pooled"]["value"] == pytest.approx(0.25)
    assert changes["pooled"]["low"] <= 0.25 <= changes["pooled"]["high"]


def test_a_miniature_study_writes_its_report_and_plot(tmp_path, models_dir):
    out = tmp_path / "study"
    argv = [
        "--teacher", "tiny-1m", "--student", "tiny-1m", "--seeds", "0", "1", "--steps", "2", "--eval-every", "1",
        "--eval-prompts", "2", "--test-problems", "6", "--out", str(out),
        "--overrides", "--grpo.prompts_per_step", "2", "--grpo.num_generations", "2",
        "--generation.max_completion_length", "4", "--generation.student_max_tokens", "4", "--eval.keep_best", "true"]
    study = main(argv)
    written = json.loads((out / "study.json").read_text())
    assert written["before"]["problems"] == 6 and [r["seed"] for r in written["runs"]] == [0, 1]
    # the per-problem outcomes behind the summaries are kept, so two studies can be paired (--compare)
    assert len(written["test_questions"]) == len(written["before_correct"]) == 6
    assert sum(written["before_correct"]) / 6 == pytest.approx(written["before"]["with_teaching_accuracy"])
    assert sum(written["student_alone_correct"]) / 6 == pytest.approx(written["before"]["student_alone_accuracy"])
    for run in written["runs"]:
        assert sum(run["after_correct"]) / 6 == pytest.approx(run["after"]["with_teaching_accuracy"])
    assert main(["--compare", str(out / "study.json"), str(out / "study.json")])["after"]["value"] == 0
    for run in written["runs"]:
        assert [step for step, _ in run["reward_curve"]] == [1, 2]
        assert [step for step, _ in run["val_curve"]] == [0, 1, 2]
        assert 0.0 <= run["after"]["ndr"]["low"] <= run["after"]["ndr"]["value"] <= run["after"]["ndr"]["high"] <= 1
        assert (out / f"seed_{run['seed']}" / "hf_model").is_dir()
        # keep_best: the test scores the policy of the best validation evaluation, which best.json names
        best = json.loads((out / f"seed_{run['seed']}" / "best.json").read_text())
        assert run["best_step"] == best["step"] and run["best"]["problems"] == 6
        assert best["value"] == max(acc for _, acc in run["val_curve"])
        assert best["step"] == next(step for step, acc in run["val_curve"] if acc == best["value"])
    assert len(study["rl_change"]["per_seed"]) == len(study["rl_change_best"]["per_seed"]) == 2
    assert (out / "study.png").stat().st_size > 1000
    history = out / "seed_0" / "history.jsonl"
    written_at = history.stat().st_mtime_ns
    again = main(["--reuse", *argv])  # the finished runs are kept, not trained again
    assert history.stat().st_mtime_ns == written_at and again["rl_change"] == study["rl_change"]


def _study(questions, before, alone, afters):
    return {"test_questions": questions, "before_correct": before, "student_alone_correct": alone,
            "runs": [{"after_correct": a} for a in afters], "rl_change": rl_changes(before, afters)}


def test_compare_studies_pairs_problems_and_pools_seeds():
    q = ["a", "b", "c", "d"]
    a = _study(q, [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    b = _study(q, [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    cmp = compare_studies(a, b)
    assert cmp["before"]["value"] == pytest.approx(0.25) and cmp["student_alone"]["value"] == pytest.approx(0.25)
    # pooled afters: a [.5, 0, 1, 0], b [1, 1, 1, .5] -> differences [.5, 1, 0, .5], mean 0.5
    assert cmp["after"]["value"] == pytest.approx(0.5)
    assert cmp["rl_change"]["b"] == b["rl_change"]["pooled"]
    with pytest.raises(SystemExit, match="different test problems"):
        compare_studies(a, _study(["x", "b", "c", "d"], *[b[k] for k in ("before_correct", "student_alone_correct")],
                                  [r["after_correct"] for r in b["runs"]]))
