import pytest

from experiments.teaching_diagnosis import (
    TeachingDraw,
    diagnose,
    draw_rewards,
    pooled_reward,
    ranking_counts,
    split_draws,
    variance_split,
)
from experiments.teaching_runner import unseen_problems
from rcl.rewards import AdaptiveTeachingReward, RolloutSample, get_reward
from rcl.tasks.teaching_check import expected_step, stated_step, teaching_verdict

REWARD = AdaptiveTeachingReward(efficiency_weight=0.0, degradation_penalty_multiplier=1.0).score


def test_teaching_verdicts_find_the_first_failure():
    q = "What is 47+38?"
    assert expected_step(q) == stated_step("ones 7+8=15, carry 1")
    assert teaching_verdict(q, "ones 7+8=15, carry 1") == "correct"
    assert teaching_verdict(q, "ones 7+8=14, carry 1") == "wrong_arithmetic"
    assert teaching_verdict(q, "ones 7+8=15, carry 0") == "wrong_arithmetic"
    assert teaching_verdict(q, "ones 4+3=7, carry 0") == "wrong_digits"
    assert teaching_verdict(q, "add the tens") == "unparseable"
    assert teaching_verdict(q, "ones 7+8=15, carry 1", has_tags=False) == "missing_tags"
    assert teaching_verdict(q, "ones 7+8=15, carry 1", truncated=True) == "over_long"
    assert teaching_verdict("Sam has 3 apples", "ones 7+8=15, carry 1") is None


def test_teaching_correctness_reward_is_registered_and_checks_the_step():
    reward = get_reward("teaching_correctness")
    make = lambda t: RolloutSample("What is 5+6?", "11", t, 3, teaching=t)  # noqa: E731
    assert reward([make("ones 5+6=11, carry 1"), make("ones 5+6=11, carry 0")]) == [1.0, 0.0]
    # a question it cannot check: the same 0.0 for the whole group, so the advantages are the other rewards'
    assert reward([RolloutSample("Sam has 3 apples", "3", "x", 1, teaching="ones 5+6=11, carry 1")]) == [0.0]
    with pytest.raises(ValueError, match="only the adaptive protocol"):
        reward([RolloutSample("What is 5+6?", "11", "11", 1)])


def test_split_draws_and_rewards_per_draw():
    assert split_draws([True, False, True, True], 2) == [[True, False], [True, True]]
    with pytest.raises(ValueError):
        split_draws([True, False, True], 2)
    draw = TeachingDraw("correct", 10, True, baseline=[[False] * 4, [True, False, False, False]],
                        with_teaching=[[True, True], [False, False]])
    # draw 0: p_base 0, p_with 1 -> +1; draw 1: p_base 0.25, p_with 0 -> -0.25 (penalty multiplier 1)
    assert draw_rewards(draw, REWARD) == [1.0, -0.25]
    # pooled: p_base 1/8, p_with 2/4 -> 0.375
    assert pooled_reward(draw, REWARD) == pytest.approx(0.375)


def test_ranking_counts_pairs_correct_against_wrong_only():
    # correct at 0 and 2, wrong at 1 and 3: pairs (0,1) win, (0,3) tie, (2,1) loss, (2,3) loss
    assert ranking_counts([1.0, 0.9, -1.0, 1.0], [True, False, True, False]) == (1, 1, 2)
    assert ranking_counts([1.0, 2.0], [True, True]) == (0, 0, 0)


def test_variance_split_hand_computed():
    # teaching 0 draws [1, 0] (mean .5, var .5); teaching 1 draws [0, 0] (mean 0, var 0)
    split = variance_split([[1.0, 0.0], [0.0, 0.0]])
    assert split["noise"] == pytest.approx(0.25)
    assert split["between"] == pytest.approx(0.125)  # variance of [0.5, 0] with ddof 1
    assert split["signal"] == pytest.approx(0.0)  # 0.125 - 0.25 / 2
    assert variance_split([[1.0, 1.0], [0.0, 0.0]]) == {"noise": 0.0, "between": 0.5, "signal": 0.5}


def test_diagnose_on_a_hand_made_group():
    base = [[False] * 4, [False] * 4]
    good = TeachingDraw("correct", 5, True, base, [[True, True], [True, False]])
    bad = TeachingDraw("wrong_arithmetic", 5, True, base, [[False, False], [False, False]])
    flat = TeachingDraw("missing_tags", 5, False, base, [[False, False], [True, False]])
    result = diagnose([[good, bad, flat]], REWARD)
    # draw 0: rewards [1, 0, 0]; draw 1: [0.5, 0, 0] (missing tags -> 0); the correct one wins all 4 pairs
    assert result["ranking"]["single_draw"]["correct_above_wrong"] == 1.0
    assert result["ranking"]["single_draw"]["pairs"] == 4
    assert result["ranking"]["pooled"]["pairs"] == 2
    assert result["zero_std_share"] == {"single_draw": 0.0, "pooled": 0.0}
    assert result["errors"]["correct"]["share"] == pytest.approx(1 / 3)
    assert result["errors"]["correct"]["student_accuracy_given"] == pytest.approx(0.75)
    assert result["errors"]["missing_tags"]["student_accuracy_given"] == pytest.approx(0.25)
    assert result["variance"]["noise"] == pytest.approx((0.125 + 0 + 0) / 3)
    assert result["student_alone_accuracy"] == 0.0
    all_zero = TeachingDraw("wrong_digits", 5, True, base, [[False, False], [False, False]])
    assert diagnose([[all_zero, all_zero]], REWARD)["zero_std_share"] == {"single_draw": 1.0, "pooled": 1.0}


def test_unseen_problems_are_new_to_the_data_module():
    from data_modules import synthetic

    seen = {p["question"] for p in synthetic.generate_problems(300, 0, (1, 2))}
    rows = unseen_problems(50, 300)
    assert len(rows) == 50 and not seen & {r["question"] for r in rows}


def test_the_correctness_weight_separates_teachings_the_student_draws_tie():
    base = [[False] * 4, [False] * 4]
    good = TeachingDraw("correct", 5, True, base, [[False, False], [False, False]])
    bad = TeachingDraw("wrong_digits", 5, True, base, [[False, False], [False, False]])
    assert diagnose([[good, bad]], REWARD)["ranking"]["single_draw"]["tied"] == 1.0
    weighted = diagnose([[good, bad]], REWARD, correctness_weight=0.5)
    assert weighted["ranking"]["single_draw"]["correct_above_wrong"] == 1.0
    assert weighted["zero_std_share"]["single_draw"] == 0.0
    assert draw_rewards(good, REWARD, 0.5) == [0.5, 0.5] and pooled_reward(bad, REWARD, 0.5) == 0.0
