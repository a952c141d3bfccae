"""The math verifier's parts: extraction rules and their order, number reading, comparison, strict mode, errors and
timeouts. Whole-output agreement is measured in test_verifier_cases.py."""

import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest

from rcl.tasks import answer_check, get_task
from rcl.tasks.answer_check import SymbolicChecker, compare, normalize_gold, parse_number, split_list
from rcl.tasks.answer_extraction import extract_answer

EXTRACT_CASES = [
    # (text, gsm8k, expected answer, expected rule)
    ("so the result is \\boxed{\\frac{1}{2}}.", False, "\\frac{1}{2}", "boxed"),  # nested braces
    ("\\boxed{\\sqrt{\\frac{a}{b}}} and more text", False, "\\sqrt{\\frac{a}{b}}", "boxed"),
    ("first \\boxed{3} then \\boxed{4}", False, "4", "boxed"),
    ("\\boxed 5", False, "5", "boxed"),
    ("<thinking>maybe \\boxed{3}</thinking>\n<solution>The answer is 4</solution>", False, "4", "tag"),
    ("<solution>first</solution> <solution>\\boxed{12}</solution>", False, "12", "tag"),
    ("<solution>\\sqrt{2}</solution>", False, "\\sqrt{2}", "tag"),  # whole, not its last number
    ("<solution>x = 5</solution>", False, "x = 5", "tag"),
    ("<solution>$\\frac{3}{4}$.</solution>", False, "\\frac{3}{4}", "tag"),
    ("<answer>7</answer> trailing", False, "7", "tag"),
    ("work\n<solution>85", False, "85", "tag"),  # cut by the token budget after the answer
    ("<solution>3 apples and 4 pears</solution>", False, "3 apples and 4 pears", "tag"),  # no number picked
    ("<solution>3 apples and 4 pears</solution>", True, "4", "tag"),  # GSM8K: the last number
    ("steps\n#### 1,000", True, "1,000", "hashes"),
    ("\\boxed{255}\nThe final answer is $10,455$.", False, "10,455", "final_answer"),
    ("Final Answer: The final answer is $\\frac{5}{12}$. I hope it is correct.", False, "\\frac{5}{12}",
     "final_answer"),
    ("**Final Answer**\n\\[\n\\boxed{6}\n\\]", False, "6", "final_answer"),
    ("The answer is 42. Check: 42 * 2 = 84.", False, "42", "answer_phrase"),
    ("Final answer: 7 apples, so 3 are left over", False, "7 apples", "final_answer"),
    ("The answer is (B).", False, "(B)", "answer_phrase"),
    ("the answer is: 1,234,567.89 dollars.", False, "1,234,567.89 dollars", "answer_phrase"),
    ("The answer is not obvious, so we compute\n$\\frac13$", False, "\\frac13", "final_line"),
    ("AZYUK2A", False, None, None),
    ("AZYUK2A", True, None, None),  # no stand-alone number in it
    ("So $x = 2\\sqrt{3}$.", False, "x = 2\\sqrt{3}", "final_line"),
    ("Thus the total is 15 dollars.", False, "15", "final_line"),  # a concluding sentence
    ("Step 2: compute the area. I could not finish.", False, None, None),
    ("Step 2: compute the area. I could not finish.", True, "2", "last_number"),  # GSM8K's documented last resort
    ("We compute 10-3", True, "3", "last_number"),  # a binary minus is not a sign
    ("She owes -$15", True, "-$15", "last_number"),
    ("They need 3 buses (2 buses hold only 80 of the 90 students).", True, "3", "last_number"),
    ("It leaves at 3:30", True, "3:30", "last_number"),
    ("<think>\\boxed{3}</think>I am not sure.", False, None, None),  # reasoning is not an answer
    ("no numbers here", True, None, None),
    ("", True, None, None),
]


@pytest.mark.parametrize(("text", "gsm8k", "answer", "rule"), EXTRACT_CASES)
def test_extraction_rules_and_their_order(text, gsm8k, answer, rule):
    got = extract_answer(text, last_number=gsm8k)
    assert (got.answer, got.rule) == (answer, rule)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<solution>We get 12 cookies in total.</solution>", "We get 12 cookies in total"),  # whole block
        ("The answer is 42.", None),  # no answer marker
        ("So $x = 5$.", None),
        ("\\boxed{7}", "7"),
        ("#### 9", "9"),
        ("The final answer is $9$.", "9"),
    ],
)
def test_strict_extraction_needs_a_marker_and_takes_it_whole(text, answer):
    assert extract_answer(text, last_number=True, strict=True).answer == answer


@pytest.mark.parametrize(
    ("ground_truth", "expected"),
    [
        ("42", "42"),
        ("  \\boxed{\\frac{1}{2}} ", "\\frac{1}{2}"),
        ("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7", "7"),
        ("#### 1,000", "1,000"),
        ("$\\pi$", "\\pi"),
        ("", ""),
    ],
)
def test_normalize_gold(ground_truth, expected):
    assert normalize_gold(ground_truth) == expected


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("1,000", 1000, False), ("1\\,000", 1000, False), ("1 000", 1000, False), ("-$15", -15, False),
        ("$-15", -15, False), ("\\$42.50", Fraction(85, 2), False), ("+7", 7, False), ("18.00", 18, False),
        (".5", Fraction(1, 2), False), ("1e3", 1000, False), ("50%", 50, True), ("3/4", Fraction(3, 4), False),
        ("\\frac{3}{4}", Fraction(3, 4), False), ("\\frac34", Fraction(3, 4), False),
        ("-\\frac{1}{2}", Fraction(-1, 2), False),
    ],
)
def test_parse_number(text, value, percent):
    assert parse_number(text) == answer_check.Number(Fraction(value), percent)


@pytest.mark.parametrize("text", ["32, 349", "1,2", "12,34", "1 2", "1,0000", "-+5", "5/0", "x", "1.2.3", ""])
def test_parse_number_refuses_what_is_not_one_number(text):
    assert parse_number(text) is None


def test_split_list_keeps_brackets_and_thousands_whole():
    assert split_list("1, 2, 3") == ["1", "2", "3"]
    assert split_list("(1, 2), 3") == ["(1, 2)", "3"]
    assert split_list("1,000") is None
    assert split_list("[0,1)") is None


MATCH_CASES = [
    ("18.00", "18", True),
    ("+7", "7", True),
    ("-7", "7", False),
    ("$1,000", "1000", True),
    ("1,000", "#### 1000", True),
    ("3/4", "0.75", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("0.33", "1/3", False),  # no rounding of unequal values
    ("1.005", "1.00", False),
    ("50%", "50", True),
    ("50%", "0.5", True),
    ("0.5", "50\\%", True),
    ("50%", "5", False),
    ("1e3", "1000", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),  # symbolic, via math-verify
    ("2x+1", "1+2x", True),
    ("x = 5", "5", True),
    ("12 cookies", "12", True),
    ("5\\text{ cm}", "5", True),
    ("120^\\circ", "120", True),
    ("\\pi", "3.14159", False),
    ("A", "a", True),
    ("(B)", "B", True),
    ("\\text{(B)}", "B", True),
    ("(D) 12", "D", True),
    ("\\textbf{(D) } 12", "C", False),
    ("1, 2, 3", "3,2,1", True),
    ("1, 2", "1, 2, 3", False),
    ("1,2", "12", False),  # a list is not a thousands-separated number
    ("32, 349", "32349", False),
    ("8 5", "13", False),  # math-verify would read spaced digits as a sum
    ("12:00", "12:00", True),
    ("[0,1)", "[0, 1)", True),
    ("5", "", False),  # an empty side never matches
    (None, "5", False),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), MATCH_CASES)
def test_compare(pred, gold, expected):
    verdict = compare(pred, gold)
    assert verdict.equal is expected and verdict.error is None


@pytest.mark.parametrize(
    ("pred", "gold", "lenient", "strict"),
    [("x = 5", "5", True, False), ("12 cookies", "12", True, False), ("50%", "0.5", True, False),
     ("50%", "50", True, True), ("\\frac{3}{4}", "0.75", True, True), ("x > 3", "(3, \\infty)", True, False)],
)
def test_strict_mode_refuses_partial_matches(pred, gold, lenient, strict):
    assert compare(pred, gold).equal is lenient
    assert compare(pred, gold, strict=True).equal is strict


def test_an_unparseable_reference_is_an_error_not_a_wrong_answer():
    score = get_task("math").score("\\boxed{5}", {"ground_truth": "\\frac{"})
    assert score.details["outcome"] == "error" and "unbalanced braces" in score.details["error"]
    assert not score.correct and score.reward == 0.0


def test_pathological_input_times_out_quickly_from_a_worker_thread_and_is_counted_as_a_timeout():
    task = get_task("math", timeout_s=1.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        compare("\\sqrt{2}", "\\sqrt{2}/1")  # make sure the helper is started, so only the check is timed
        start = time.monotonic()
        # evaluating 9^(9^(9^9)) runs for minutes; math-verify's own signal timeout cannot work off the main thread
        score = pool.submit(task.score, "\\boxed{9^{9^{9^{9}}}}", {"ground_truth": "1"}).result()
        assert time.monotonic() - start < 5
        assert score.details["outcome"] == "timeout" and "timed out after 1 s" in score.details["error"]
        # the helper was replaced and keeps answering
        assert pool.submit(compare, "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}").result().equal is True


def test_a_helper_that_dies_during_a_check_is_an_error(monkeypatch):
    checker = SymbolicChecker()
    assert checker.check("x", "x", 5.0).equal is True
    read_line = answer_check._read_line

    def die_then_read(process, timeout):
        process.kill()
        process.wait()
        return read_line(process, timeout)

    monkeypatch.setattr(answer_check, "_read_line", die_then_read)
    verdict = checker.check("2x", "x+x", 5.0)
    assert not verdict.equal and not verdict.timed_out and verdict.error == "the math-verify helper process died"
    monkeypatch.setattr(answer_check, "_read_line", read_line)
    assert checker.check("2x", "x+x", 5.0).equal is True  # a new helper takes over
    checker.close()


def test_concurrent_checks_get_their_own_answers():
    pairs = [("\\sqrt{4}", "2", True), ("\\sqrt{5}", "2", False), ("2x", "x+x", True), ("x^2", "2x", False)] * 3
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: compare(case[0], case[1]).equal, pairs))
    assert results == [expected for _, _, expected in pairs]
