"""The reward self-test: canned completions through the recipe's rewards, in both protocols, and a recipe whose
gold completion does not beat the empty one refused at start."""

import pytest

from rcl.rewards import get_reward
from rcl.rl.loop import cli_main
from rcl.tasks import get_task
from rcl.tasks.self_test import RewardSelfTestError, canned_completions, reward_self_test
from test_rl_loop import DIRECT, RCL, tiny_overrides

ROWS = [{"question": f"What is {a}+{b}?", "ground_truth": str(a + b)} for a, b in ((4, 5), (12, 30), (7, 7))]


def test_canned_completions_are_empty_gold_wrong_and_format_only():
    task = get_task("math", format="reasoning_answer")
    pairs = canned_completions(task, ROWS)
    assert [c for _, c in pairs["empty"]] == ["", "", ""]
    assert all(task.score(c, row).correct for row, c in pairs["gold"])
    assert all(not task.score(c, row).correct for row, c in pairs["wrong"]) and len(pairs["wrong"]) == 3
    for row, completion in pairs["format_only"]:
        score = task.score(completion, row)
        assert score.details["format_ok"] and not score.correct


def test_direct_protocol_table():
    task = get_task("arithmetic")
    rewards = {"correctness": get_reward("correctness")}
    table = reward_self_test(task, rewards, {"correctness": 1.0}, ROWS, "direct")
    assert {kind: values["total"] for kind, values in table.items()} == {
        "empty": 0.0, "gold": 1.0, "wrong": 0.0, "format_only": 0.0}


def test_adaptive_protocol_simulates_a_student_taught_the_gold_answer():
    task = get_task("arithmetic")
    rewards = {"adaptive_teaching": get_reward("adaptive_teaching", efficiency_weight=0.0),
               "teaching_format": get_reward("teaching_format")}
    table = reward_self_test(task, rewards, {"adaptive_teaching": 1.0, "teaching_format": 0.5}, ROWS,
                             "adaptive_teaching")
    # gold: the student goes from wrong to right (delta 1) and the teaching has its tags
    assert table["gold"] == {"total": 1.5, "adaptive_teaching": 1.0, "teaching_format": 1.0}
    assert table["empty"] == {"total": 0.0, "adaptive_teaching": 0.0, "teaching_format": 0.0}
    assert table["wrong"]["adaptive_teaching"] == 0.0 and table["format_only"]["teaching_format"] == 1.0


def test_gated_format_task_with_a_format_reward():
    task = get_task("gsm8k", format="think_answer")
    rewards = {"correctness": get_reward("correctness"), "format": get_reward("format")}
    table = reward_self_test(task, rewards, {"correctness": 1.0, "format": 0.1}, ROWS, "direct")
    assert table["gold"]["total"] == pytest.approx(1.1) and table["format_only"]["total"] == pytest.approx(0.1)
    assert table["format_only"]["correctness"] == 0.0, "the format alone earns no correctness"


@pytest.mark.parametrize("weights", [{"correctness": -1.0}, {"correctness": 0.0}])
def test_a_reward_that_does_not_prefer_gold_is_refused(weights):
    rewards = {"correctness": get_reward("correctness")}
    with pytest.raises(RewardSelfTestError, match=r"the gold completion scores (-1|0)\.000, not more than the empty "
                                                  r"completion \(0\.000\).*correctness 1\.000 vs 0\.000"):
        reward_self_test(get_task("arithmetic"), rewards, weights, ROWS, "direct")


def test_a_recipe_whose_gold_does_not_beat_empty_fails_at_start(tmp_path):
    with pytest.raises(SystemExit, match="rcl: reward self-test: the gold completion scores -1.000"):
        cli_main("fit", ["--config", DIRECT, *tiny_overrides(tmp_path / "run", "--reward.functions",
                                                             "{correctness: -1.0}")])
    assert not (tmp_path / "run").exists(), "refused before any run folder or model"
    with pytest.raises(SystemExit, match="rcl: reward self-test"):  # the teaching reward cannot be earned by gold
        cli_main("fit", ["--config", RCL, *tiny_overrides(tmp_path / "rcl", "--reward.kwargs",
                                                          "{adaptive_teaching: {missing_tags_reward: 5.0}}")])
