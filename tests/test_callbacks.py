"""The loop's callbacks driven the way the loop drives them, on hand-computed interactions: exact teaching metrics,
the degradation log and window NDR, the sample log, and the reference-model sync."""

import json
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric import Fabric
from test_metrics import DATA, EXPECTED

from callbacks.degradation import DegradationTracker
from callbacks.ref_sync import RefModelSync, mix_into
from callbacks.sample_logging import SampleLogger
from callbacks.teaching_metrics import TeachingMetrics
from rcl.rl.rollout import Interaction


def interaction(n: int, p_base: float, p_with: float, completed: float = 1.0, teaching_tokens: int = 100,
                probe_tokens: int = 10, direct: bool = False) -> Interaction:
    return Interaction(
        question=f"question {n}",
        ground_truth=str(n),
        policy_completion=f"<think>plan {n}</think><teaching>hint {n}</teaching>",
        approach=f"approach {n}",
        teaching=f"hint {n}",
        teaching_tokens=teaching_tokens,
        probe_tokens=probe_tokens,
        baseline_correct=None if direct else [k < 4 * p_base for k in range(4)],
        with_teaching_correct=None if direct else [k < 4 * p_with for k in range(4)],
        p_base=p_base,
        p_with=p_with,
        completed=completed,
        reward=float(n) / 2,
    )


def table_interactions() -> list[Interaction]:
    """test_metrics.DATA as five interactions: rows 2 (.5 -> .25) and 3 (1 -> .5) are degraded."""
    columns = zip(*(DATA[name].tolist() for name in ("p_base", "p_with", "completed", "teaching_tokens",
                                                      "probe_tokens")))
    return [interaction(n, pb, pw, c, int(tt), int(pt)) for n, (pb, pw, c, tt, pt) in enumerate(columns)]


def cpu_fabric(*callbacks) -> Fabric:
    return Fabric(accelerator="cpu", devices=1, callbacks=list(callbacks))


def end_step(fabric: Fabric, state: dict, interactions: list[Interaction], iteration: int = 0) -> dict:
    """Fire on_train_batch_end with the loop's keywords; returns the metrics the callbacks added."""
    metrics: dict = {}
    fabric.call("on_train_batch_end", fabric=fabric, state=state, rollout=SimpleNamespace(interactions=interactions),
                metrics=metrics, engines={"teacher": None, "student": None}, iteration=iteration)
    return metrics


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_step_teaching_metrics_are_the_exact_values_of_the_step(tmp_path):
    fabric = cpu_fabric(TeachingMetrics())
    metrics = end_step(fabric, {"step": 1, "out_dir": str(tmp_path)}, table_interactions())
    assert set(metrics) == {f"teaching/{name}" for name in EXPECTED}
    for name, expected in EXPECTED.items():
        assert metrics[f"teaching/{name}"] == pytest.approx(expected), name


def test_a_later_step_reports_only_its_own_interactions(tmp_path):
    fabric = cpu_fabric(TeachingMetrics())
    end_step(fabric, {"step": 1, "out_dir": str(tmp_path)}, table_interactions())
    metrics = end_step(fabric, {"step": 2, "out_dir": str(tmp_path)},
                       [interaction(0, 0.5, 0.25, teaching_tokens=200), interaction(1, 0.0, 0.75, teaching_tokens=200)])
    assert metrics["teaching/ndr"] == 0.5
    assert metrics["teaching/learning_gain"] == pytest.approx(0.25)  # (-.25 + .75) / 2
    assert metrics["teaching/baseline_accuracy"] == 0.25
    assert metrics["teaching/with_teaching_accuracy"] == 0.5
    assert metrics["teaching/tes"] == pytest.approx(1.25)  # .25 * 1.0 / (200 / 1000)


def test_validation_teaching_metrics_go_under_eval(tmp_path):
    fabric = cpu_fabric(TeachingMetrics())
    metrics: dict = {}
    fabric.call("on_validation_end", fabric=fabric, state={"step": 0, "out_dir": str(tmp_path)},
                rollout=SimpleNamespace(interactions=table_interactions()), metrics=metrics)
    assert metrics["eval/ndr"] == pytest.approx(0.6)
    assert metrics["eval/tes"] == pytest.approx(0.05 * 0.7 / 0.3)
    assert metrics["eval/learning_gain"] == pytest.approx(0.05)
    assert not any(key.startswith("teaching/") for key in metrics)


def test_direct_protocol_interactions_add_no_teaching_metrics_and_no_degradations(tmp_path):
    fabric = cpu_fabric(TeachingMetrics(), DegradationTracker())
    direct = [interaction(n, 1.0, 0.0, direct=True) for n in range(3)]
    assert end_step(fabric, {"step": 1, "out_dir": str(tmp_path)}, direct) == {}
    assert not (tmp_path / "degradations.jsonl").exists()


def test_degradation_log_holds_exactly_the_rows_teaching_made_worse(tmp_path):
    fabric = cpu_fabric(DegradationTracker())
    metrics = end_step(fabric, {"step": 3, "out_dir": str(tmp_path)}, table_interactions())
    assert metrics == {"teaching/window_ndr": pytest.approx(0.6)}  # 3 of 5 with p_with >= p_base
    rows = lines(tmp_path / "degradations.jsonl")
    assert [(r["step"], r["question"], r["p_base"], r["p_with"]) for r in rows] == [
        (3, "question 2", 0.5, 0.25),
        (3, "question 3", 1.0, 0.5),
    ]
    assert rows[0]["teacher_completion"] == "<think>plan 2</think><teaching>hint 2</teaching>"
    assert rows[0]["teaching"] == "hint 2"
    assert rows[0]["approach"] == "approach 2"
    assert rows[0]["baseline_correct"] == [True, True, False, False]
    assert rows[0]["with_teaching_correct"] == [True, False, False, False]
    assert "policy_completion" not in rows[0]


def test_degradations_of_later_steps_are_appended(tmp_path):
    fabric = cpu_fabric(DegradationTracker())
    end_step(fabric, {"step": 1, "out_dir": str(tmp_path)}, table_interactions())
    end_step(fabric, {"step": 2, "out_dir": str(tmp_path)}, [interaction(7, 0.75, 0.5), interaction(8, 0.0, 1.0)])
    rows = lines(tmp_path / "degradations.jsonl")
    assert [(r["step"], r["question"]) for r in rows] == [(1, "question 2"), (1, "question 3"), (2, "question 7")]


def test_window_ndr_counts_only_the_last_window_interactions(tmp_path, capsys):
    fabric = cpu_fabric(DegradationTracker(window=4, ndr_threshold=0.9, warn_every_n_steps=1))
    state = {"step": 1, "out_dir": str(tmp_path)}
    # rows 1-4 of the table stay in a window of 4: non-degraded, degraded, degraded, non-degraded
    assert end_step(fabric, state, table_interactions())["teaching/window_ndr"] == 0.5
    assert "warning: NDR over the last 4 interactions is 0.500 (< 0.9): 50% of" in capsys.readouterr().out
    state["step"] = 2
    # two improvements push rows 1 and 2 out: degraded, non-degraded, improved, improved
    assert end_step(fabric, state, [interaction(5, 0.0, 1.0), interaction(6, 0.0, 1.0)])["teaching/window_ndr"] == 0.75
    assert "is 0.750 (< 0.9, +0.250 since the last warning at step 1): 25% of teachings left the student worse " \
        "than alone" in capsys.readouterr().out
    state["step"] = 3
    assert end_step(fabric, state, [interaction(7, 0.0, 0.5)])["teaching/window_ndr"] == 1.0
    assert "warning" not in capsys.readouterr().out


def test_a_second_pass_over_the_same_rollout_is_not_counted_again(tmp_path):
    fabric, state = cpu_fabric(DegradationTracker(window=50)), {"step": 1, "out_dir": str(tmp_path)}
    end_step(fabric, state, table_interactions())
    state["step"] = 2
    assert "teaching/window_ndr" not in end_step(fabric, state, table_interactions(), iteration=1)
    assert len(lines(tmp_path / "degradations.jsonl")) == 2


def test_the_ndr_window_survives_a_checkpoint(tmp_path):
    first, resumed = DegradationTracker(window=4), DegradationTracker(window=4)
    fabric, state = cpu_fabric(first), {"step": 1, "out_dir": str(tmp_path)}
    end_step(fabric, state, table_interactions())  # window: non-degraded, degraded, degraded, non-degraded
    checkpoint: dict = {}
    fabric.call("on_save_checkpoint", fabric=fabric, state=state, checkpoint=checkpoint)
    cpu_fabric(resumed).call("on_load_checkpoint", fabric=fabric, state=state, checkpoint=checkpoint)
    state["step"] = 2
    step = [interaction(5, 0.0, 1.0), interaction(6, 0.0, 1.0)]
    assert end_step(cpu_fabric(resumed), state, step)["teaching/window_ndr"] == 0.75  # as in the test above
    assert end_step(fabric, state, step)["teaching/window_ndr"] == 0.75


def test_a_low_ndr_warning_repeats_at_most_every_n_steps_and_again_after_a_recovery(tmp_path, capsys):
    fabric = cpu_fabric(DegradationTracker(window=4, ndr_threshold=0.9, warn_every_n_steps=3))
    degraded = [interaction(n, 1.0, 0.0) for n in range(4)]
    warned = []
    for step in range(1, 9):  # NDR 0 over the window at every step
        end_step(fabric, {"step": step, "out_dir": str(tmp_path)}, degraded)
        if "warning: NDR" in capsys.readouterr().out:
            warned.append(step)
    assert warned == [1, 4, 7]
    end_step(fabric, {"step": 9, "out_dir": str(tmp_path)}, [interaction(n, 0.0, 1.0) for n in range(4)])
    end_step(fabric, {"step": 10, "out_dir": str(tmp_path)}, degraded)
    out = capsys.readouterr().out
    assert out.count("warning: NDR") == 1 and "is 0.000" in out, "a new drop after NDR recovered warns at once"


def test_degradations_are_capped_per_step_and_the_file_rotates(tmp_path):
    fabric = cpu_fabric(DegradationTracker(max_per_step=2, max_file_mb=300 / 1024 / 1024))
    # four degraded rows: the two most degraded (rows 1 and 3: -1.0, -0.75) are written, in rollout order
    step = [interaction(0, 0.5, 0.25), interaction(1, 1.0, 0.0), interaction(2, 0.5, 0.5), interaction(3, 1.0, 0.25),
            interaction(4, 0.75, 0.5)]
    end_step(fabric, {"step": 1, "out_dir": str(tmp_path)}, step)
    assert [r["question"] for r in lines(tmp_path / "degradations.jsonl")] == ["question 1", "question 3"]
    assert (tmp_path / "degradations.jsonl").stat().st_size > 300  # two rows pass the 300-byte cap
    end_step(fabric, {"step": 2, "out_dir": str(tmp_path)}, step)
    # the full file moved to .1 before step 2 was written; the newest rows are in the file itself
    assert [r["step"] for r in lines(tmp_path / "degradations.jsonl.1")] == [1, 1]
    assert [r["step"] for r in lines(tmp_path / "degradations.jsonl")] == [2, 2]
    end_step(fabric, {"step": 3, "out_dir": str(tmp_path)}, step)
    assert [r["step"] for r in lines(tmp_path / "degradations.jsonl.1")] == [2, 2], "the oldest rows are dropped"


def test_no_low_ndr_warning_until_the_window_is_full(tmp_path, capsys):
    fabric = cpu_fabric(DegradationTracker(window=50, ndr_threshold=0.9))
    assert end_step(fabric, {"step": 1, "out_dir": str(tmp_path)}, table_interactions())["teaching/window_ndr"] == 0.6
    assert "warning" not in capsys.readouterr().out


def test_samples_are_written_every_n_steps_with_every_column(tmp_path):
    fabric = cpu_fabric(SampleLogger(every_n_steps=2, num_samples=2))
    for step in (1, 2, 3, 4):
        end_step(fabric, {"step": step, "out_dir": str(tmp_path)}, table_interactions()[step - 1 :])
    rows = lines(tmp_path / "samples.jsonl")
    assert [(r["step"], r["question"]) for r in rows] == [
        (2, "question 1"), (2, "question 2"), (4, "question 3"), (4, "question 4"),
    ]
    assert rows[1] == {
        "step": 2,
        "question": "question 2",
        "ground_truth": "2",
        "approach": "approach 2",
        "teaching": "hint 2",
        "policy_completion": "<think>plan 2</think><teaching>hint 2</teaching>",
        "p_base": 0.5,
        "p_with": 0.25,
        "reward": 1.0,
    }


def test_samples_every_zero_steps_writes_nothing(tmp_path):
    fabric = cpu_fabric(SampleLogger(every_n_steps=0))
    end_step(fabric, {"step": 10, "out_dir": str(tmp_path)}, table_interactions())
    assert not (tmp_path / "samples.jsonl").exists()


def linear(weight: list[float], bias: float) -> torch.nn.Linear:
    module = torch.nn.Linear(len(weight), 1)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([weight]))
        module.bias.fill_(bias)
    return module


def test_mix_into_moves_the_reference_alpha_of_the_way_to_the_policy():
    reference, policy = linear([10.0, -5.0], 2.5), linear([20.0, 5.0], -2.5)
    mix_into(reference, policy.named_parameters(), alpha=0.6)
    # .4 * 10 + .6 * 20 = 16, .4 * -5 + .6 * 5 = 1, .4 * 2.5 + .6 * -2.5 = -.5 (to float32 rounding: .6 is inexact)
    torch.testing.assert_close(reference.weight, torch.tensor([[16.0, 1.0]]))
    torch.testing.assert_close(reference.bias, torch.tensor([-0.5]))
    assert torch.equal(policy.weight, torch.tensor([[20.0, 5.0]])), "the policy is left as it was"
    mix_into(reference, policy.named_parameters(), alpha=1.0)
    assert torch.equal(reference.weight, policy.weight) and torch.equal(reference.bias, policy.bias)


def test_mix_into_refuses_a_policy_that_misses_reference_weights():
    reference, policy = linear([1.0, 2.0], 3.0), linear([1.0, 2.0], 3.0)
    with pytest.raises(RuntimeError, match=r"the policy has no weights for \['bias'\] \(1 in all\)"):
        mix_into(reference, [("weight", policy.weight), ("some_buffer", torch.zeros(1))], alpha=0.5)


def test_ref_sync_mixes_only_every_n_steps_through_the_fabric_wrapper(tmp_path):
    fabric = cpu_fabric(RefModelSync(alpha=0.5, every_n_steps=3))
    reference = linear([0.0, 0.0], 0.0).requires_grad_(False)
    state = {"model": fabric.setup_module(linear([8.0, 8.0], 8.0)), "ref_model": reference, "out_dir": str(tmp_path)}
    seen = []
    for step in range(1, 7):
        state["step"] = step
        end_step(fabric, state, [])
        seen.append(reference.bias.item())
    # 0 -> .5 * 0 + .5 * 8 = 4 at step 3 -> .5 * 4 + .5 * 8 = 6 at step 6
    assert seen == [0.0, 0.0, 4.0, 4.0, 4.0, 6.0]
    assert reference.weight.tolist() == [[6.0, 6.0]]


def test_ref_sync_without_a_reference_model_does_nothing(tmp_path):
    fabric = cpu_fabric(RefModelSync(alpha=0.6, every_n_steps=1))
    policy = linear([1.0, 2.0], 3.0)
    end_step(fabric, {"step": 1, "model": policy, "ref_model": None, "out_dir": str(tmp_path)}, [])
    assert policy.weight.tolist() == [[1.0, 2.0]] and policy.bias.tolist() == [3.0]


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_ref_sync_rejects_alpha_outside_zero_to_one(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        RefModelSync(alpha=alpha)
