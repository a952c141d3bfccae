"""The math/GSM8K verifier against rcl's own cases (tests/verifier_cases.py): each case's verdict, and the measured
agreement over all of them, with no false positive allowed among the expected-wrong cases."""

import pytest

from rcl.tasks import get_task
from verifier_cases import CASES, KNOWN_LIMITS

TASKS = {"math": get_task("math"), "gsm8k": get_task("gsm8k")}
AGREEMENT_TARGET = 0.97


def verdict(case) -> bool:
    _, task, completion, gold, _ = case
    score = TASKS[task].score(completion, {"ground_truth": gold})
    assert not score.details.get("error"), score.details
    return score.correct


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c[0], marks=[pytest.mark.xfail(strict=True, reason="known limit")] if c[0] in KNOWN_LIMITS
                  else []) for c in CASES],
)
def test_case(case):
    assert verdict(case) is case[4]


def test_agreement_and_no_false_positive(capsys):
    results = [(case, verdict(case)) for case in CASES]
    agreement = sum(got is case[4] for case, got in results) / len(results)
    false_positives = [case[0] for case, got in results if got and not case[4]]
    with capsys.disabled():
        print(f"\nverifier agreement: {agreement:.3f} on {len(results)} cases "
              f"({sum(not c[4] for c in CASES)} expected wrong, {len(false_positives)} false positives)")
    assert false_positives == []
    assert agreement >= AGREEMENT_TARGET
