import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from experiments.teaching_control import compare, main, table


def test_compare_pairs_rcl_and_trl_on_the_same_problems():
    before = [0.0, 0.0, 1.0, 1.0]
    after = {"rcl": [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], "trl": [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]]}
    cmp = compare(before, after)
    assert [c["value"] for c in cmp["change"]["rcl"]["per_seed"]] == [pytest.approx(0.25), pytest.approx(0.5)]
    assert [c["value"] for c in cmp["change"]["trl"]["per_seed"]] == [pytest.approx(0.0), pytest.approx(-0.25)]
    assert [d["value"] for d in cmp["rcl_minus_trl"]["per_seed"]] == [pytest.approx(0.25), pytest.approx(0.75)]
    # pooled: rcl [1, .5, 1, 1] - TRL [0, 0, 1, .5] -> [1, .5, 0, .5], mean 0.5
    pooled = cmp["rcl_minus_trl"]["pooled"]
    assert pooled["value"] == pytest.approx(0.5) and pooled["low"] <= 0.5 <= pooled["high"]


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_a_miniature_control_trains_both_frameworks_and_scores_them_alike(tmp_path, models_dir, capsys):
    from rcl.rewards import available_rewards, register_reward
    from rcl.tiny_models import resolve_model

    if "test_text_length" not in available_rewards():
        @register_reward("test_text_length")
        class TextLength:
            """Characters of the completion: differs between an untrained model's samples, so two steps train."""

            def __call__(self, samples):
                return [len(s.completion) / 20 for s in samples]

    out = tmp_path / "control"
    steps, prompts, problems = 2, 2, 6
    results = main([
        "--model", "tiny-1m", "--seeds", "0", "--steps", str(steps), "--test-problems", str(problems),
        "--out", str(out), "--overrides", "--grpo.prompts_per_step", str(prompts), "--grpo.num_generations", "2",
        "--grpo.micro_batch_size", "4", "--generation.max_completion_length", "4", "--eval.num_prompts", "2",
        "--reward.functions", "{test_text_length: 1.0}", "--reward.kwargs", "{}"])
    written = json.loads((out / "control.json").read_text())
    rcl, trl = written["runs"]["rcl"][0], written["runs"]["trl"][0]

    # both trained on the same prompts in the same order: rcl's loop recorded them, TRL's reward function saw them
    assert len(rcl["questions"]) == steps and all(len(q) == prompts for q in rcl["questions"])
    assert trl["questions"] == rcl["questions"]
    assert len(rcl["reward"]) == len(trl["reward"]) == steps

    # the start model and both trained models were scored on the identical test rows
    expected = [row["question"] for row in written["test_rows"]]
    assert len(expected) == problems
    assert written["before_questions"] == rcl["scored_questions"] == trl["scored_questions"] == expected
    assert len(written["before"]) == len(rcl["after"]) == len(trl["after"]) == problems

    # training changed the weights of both exports, and the recorded distance is the real one
    start = _weights(Path(resolve_model("tiny-1m")))
    for fw, run in (("rcl", rcl), ("trl", trl)):
        trained = _weights(out / f"{fw}_seed_0" / "hf_model")
        distance = sum(float(((trained[k] - start[k]) ** 2).sum()) for k in start) ** 0.5
        assert distance > 0 and run["weight_change_l2"] == pytest.approx(distance, rel=1e-4)

    # the printed table is the results file's table, and its numbers follow the file
    printed = capsys.readouterr().out
    assert table(written) in printed and results["comparison"] == written["comparison"]
    written["before"] = [1.0] * problems
    written["runs"]["trl"][0]["after"] = [0.5] * problems
    written["comparison"]["rcl_minus_trl"]["pooled"] = {"value": -0.25, "low": -0.5, "high": -0.125}
    text = table(written)
    assert " 1.000 |" in text and " 0.500 |" in text and "-0.250 [-0.500, -0.125]" in text
    assert "look for the gap in rcl's loop" in text
