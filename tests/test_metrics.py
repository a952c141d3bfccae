import math
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rcl.metrics import (
    LearningGain,
    NonDegradationRate,
    TeachingEfficiencyScore,
    TeachingMetrics,
    completion_share,
)

# five interactions; delta = p_with - p_base = [1, 0, -.25, -.5, 0]
DATA = {
    "p_base": torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0]),
    "p_with": torch.tensor([1.0, 1.0, 0.25, 0.5, 0.0]),
    "completed": torch.tensor([1.0, 1.0, 0.5, 1.0, 0.0]),
    "teaching_tokens": torch.tensor([100.0, 200.0, 300.0, 400.0, 500.0]),
    "probe_tokens": torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]),
}
EXPECTED = {
    "ndr": 0.6,  # delta >= 0 in 3 of 5
    "learning_gain": 0.05,  # (1 + 0 - .25 - .5 + 0) / 5
    "baseline_accuracy": 0.5,  # 2.5 / 5
    "with_teaching_accuracy": 0.55,  # 2.75 / 5
    "completion_rate": 0.7,  # 3.5 / 5
    "improvement_rate": 0.2,  # delta > 0 in 1 of 5
    "degradation_rate": 0.4,  # delta < 0 in 2 of 5
    "teaching_tokens_mean": 300.0,
    "probe_tokens_mean": 30.0,
    "tes": 0.05 * 0.7 / 0.3,  # (.55 - .5) * .7 / (300 / 1000) = .11666667
}


def _columns(*names, rows=slice(None)):
    return {name: DATA[name][rows] for name in names}


def test_teaching_metrics_exact_values():
    metric = TeachingMetrics()
    metric.update(**_columns(*DATA, rows=slice(0, 2)))  # two updates accumulate like one
    metric.update(**_columns(*DATA, rows=slice(2, 5)))
    values = metric.compute()
    assert set(values) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        assert values[name].item() == pytest.approx(expected), name


def test_single_metrics_exact_values():
    ndr, gain, tes = NonDegradationRate(), LearningGain(), TeachingEfficiencyScore()
    ndr.update(**_columns("p_base", "p_with"))
    gain.update(**_columns("p_base", "p_with"))
    tes.update(**_columns("p_base", "p_with", "completed", "teaching_tokens"))
    assert ndr.compute().item() == pytest.approx(EXPECTED["ndr"])
    assert gain.compute().item() == pytest.approx(EXPECTED["learning_gain"])
    assert tes.compute().item() == pytest.approx(EXPECTED["tes"])


def test_empty_state_is_nan_not_a_crash():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        values = TeachingMetrics().compute()
        assert all(math.isnan(value.item()) for value in values.values())
        assert math.isnan(NonDegradationRate().compute().item())
        assert math.isnan(LearningGain().compute().item())
        assert math.isnan(TeachingEfficiencyScore().compute().item())


def test_tes_is_nan_for_zero_length_teaching():
    metric = TeachingEfficiencyScore()
    metric.update(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([0.0]))
    assert math.isnan(metric.compute().item())


def test_reset_clears_state():
    metric = NonDegradationRate()
    metric.update(torch.tensor([1.0]), torch.tensor([0.0]))
    assert metric.compute().item() == 0.0
    metric.reset()
    metric.update(torch.tensor([0.0]), torch.tensor([1.0]))
    assert metric.compute().item() == 1.0


def test_update_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        NonDegradationRate().update(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        LearningGain().update(torch.zeros(2, 2), torch.zeros(2, 2))


def test_completion_share():
    # 2nd hit the token budget, 3rd has no answer
    assert completion_share([True, True, False, True], [True, False, True, True]) == 0.5
    assert math.isnan(completion_share([], []))
    with pytest.raises(ValueError, match="2 responses but 1 finish flags"):
        completion_share([True, False], [True])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sync_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rows = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven shards
    metric, ndr = TeachingMetrics(), NonDegradationRate()
    metric.update(**_columns(*DATA, rows=rows))
    ndr.update(**_columns("p_base", "p_with", rows=rows))
    values = {name: value.item() for name, value in metric.compute().items()}
    values["NonDegradationRate"] = ndr.compute().item()
    torch.save(values, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_sync_equals_concatenated_data(tmp_path):
    mp.spawn(_sync_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    single = TeachingMetrics()
    single.update(**DATA)
    expected = {name: value.item() for name, value in single.compute().items()}
    expected["NonDegradationRate"] = EXPECTED["ndr"]
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        assert synced == pytest.approx(expected)
    # a rank's local rows alone give different values: the sync is what makes them right
    local = TeachingMetrics()
    local.update(**_columns(*DATA, rows=slice(0, 3)))
    assert local.compute()["ndr"].item() != pytest.approx(expected["ndr"])
