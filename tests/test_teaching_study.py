import json

import pytest

from experiments.teaching_study import main, rl_changes


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
