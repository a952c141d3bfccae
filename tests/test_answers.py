import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rcl.answers import answers_match, extract_answer, has_parseable_answer, is_correct, normalize_ground_truth

EXTRACT_CASES = [
    # nested braces: the original's regex stopped at the first "}" and returned "\frac{1"
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{\\frac{a}{b}}} and more text", "\\sqrt{\\frac{a}{b}}"),
    ("first \\boxed{3} then \\boxed{4}", "4"),
    ("\\boxed 5", "5"),
    ("\\boxed{} then 7", "7"),  # an empty box is no answer
    # the final <solution> wins over a \boxed written during reasoning (the original took any \boxed first)
    ("<thinking>maybe \\boxed{3}</thinking>\n<solution>The answer is 4</solution>", "4"),
    ("<solution>first</solution> <solution>\\boxed{12}</solution>", "12"),
    ("<solution>18.00</solution>", "18.00"),
    ("<solution>\\sqrt{2}</solution>", "\\sqrt{2}"),  # a bare expression is taken whole, not its last number "2"
    ("<solution>x = 5</solution>", "x = 5"),
    ("<solution>We get 12 cookies in total.</solution>", "12"),
    ("<solution>yes</solution>", "yes"),
    ("<solution>$\\frac{3}{4}$.</solution>", "\\frac{3}{4}"),
    ("<solution></solution> so the answer is 9", "9"),
    # numbers after the answer do not replace it
    ("The answer is 42. Check: 42 * 2 = 84.", "42"),
    ("Final answer: 7 apples, so 3 are left over", "7"),
    ("**Answer:** $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("The answer is (B).", "(B)"),
    ("the answer is: 1,234,567.89 dollars.", "1,234,567.89"),
    ("The answer is \\boxed{-2}.", "-2"),
    # last number: sign, decimals, thousands separators, fractions; a binary minus is not a sign
    ("so x = -3.5", "-3.5"),
    ("Total: $1,000", "1,000"),
    ("10 - 3 = 7", "7"),
    ("10-3", "3"),
    ("the ratio is 3/4", "3/4"),
    ("about .5 of it", ".5"),
    ("no numbers here", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


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
def test_normalize_ground_truth(ground_truth, expected):
    assert normalize_ground_truth(ground_truth) == expected


MATCH_CASES = [
    ("18.00", "18", True),  # the original's 2-decimal format made "18.00" == "18" only by luck of formatting
    ("18.0", "18", True),
    ("+7", "7", True),
    ("-7", "7", False),
    ("$1,000", "1000", True),
    ("1,000", "#### 1000", True),
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("0.33", "1/3", False),  # no rounding of unequal values
    ("1.005", "1.00", False),  # the original's "%.2f" formatting would have called these equal
    ("2.004", "2", False),
    ("50%", "50", True),
    ("1e3", "1000", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),  # symbolic, via math-verify
    ("2x+1", "1+2x", True),
    ("x = 5", "5", True),
    ("\\pi", "3.14159", False),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("A", "a", True),
    ("(B)", "B", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("5", "", False),  # empty ground truth never matches
    ("", "5", False),
    (None, "5", False),
    ("1,2", "12", False),  # a list is not a thousands-separated number
]


@pytest.mark.parametrize(("pred", "ground_truth", "expected"), MATCH_CASES)
def test_answers_match(pred, ground_truth, expected):
    assert answers_match(pred, ground_truth) is expected


@pytest.mark.parametrize(
    ("response", "ground_truth", "expected"),
    [
        ("Half of it: \\boxed{\\frac{1}{2}}", "0.5", True),
        ("<solution>The answer is 18.00</solution>", "18", True),
        ("The answer is 42. Then 42 + 1 = 43", "42", True),
        ("<thinking>\\boxed{3}?</thinking><solution>4</solution>", "4", True),
        ("<thinking>\\boxed{3}?</thinking><solution>4</solution>", "3", False),
        ("I have no idea", "4", False),
        ("<solution>4</solution>", "", False),
        ("<solution>1,000 dollars</solution>", "#### 1000", True),
    ],
)
def test_is_correct(response, ground_truth, expected):
    assert is_correct(response, ground_truth) is expected


def test_has_parseable_answer():
    assert has_parseable_answer("<solution>7</solution>")
    assert has_parseable_answer("so it is 7")
    assert not has_parseable_answer("I am still thinking about")
    assert not has_parseable_answer("")


def test_pathological_input_returns_false_quickly_from_a_worker_thread():
    with ThreadPoolExecutor(max_workers=1) as pool:
        answers_match("\\sqrt{2}", "\\sqrt{2}/1")  # make sure the helper is started, so only the check is timed
        start = time.monotonic()
        # evaluating 9^(9^(9^9)) runs for minutes; math-verify's own signal timeout cannot work off the main thread
        assert pool.submit(answers_match, "9^{9^{9^{9}}}", "1", timeout=1.0).result() is False
        assert time.monotonic() - start < 5
        # the helper was replaced and keeps answering
        assert pool.submit(answers_match, "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}").result() is True


def test_concurrent_checks_get_their_own_answers():
    pairs = [("\\sqrt{4}", "2", True), ("\\sqrt{5}", "2", False), ("2x", "x+x", True), ("x^2", "2x", False)] * 3
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: answers_match(case[0], case[1]), pairs))
    assert results == [expected for _, _, expected in pairs]
