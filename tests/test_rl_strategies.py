"""Strategy flags build the right Fabric strategies (they need GPUs to run: see the gpu-marked test)."""

import math
from pathlib import Path
from unittest import mock

import pytest
import torch

from rcl.rl.args import TrainerArgs
from rcl.rl.loop import build_fabric, is_deepspeed

@pytest.fixture()
def two_fake_gpus():
    with mock.patch("lightning.fabric.accelerators.cuda.num_cuda_devices", return_value=2), mock.patch(
        "torch.cuda.is_available", return_value=True
    ):
        yield


@pytest.mark.parametrize(
    "flag, cls, stage, offload",
    [
        ("ddp", "DDPStrategy", None, None),
        ("fsdp", "FSDPStrategy", None, None),
        ("deepspeed_stage_2", "DeepSpeedStrategy", 2, False),
        ("deepspeed_stage_3", "DeepSpeedStrategy", 3, False),
        ("deepspeed_stage_3_offload", "DeepSpeedStrategy", 3, True),
    ],
)
def test_strategy_flag_builds_the_fabric_strategy(two_fake_gpus, flag, cls, stage, offload):
    if "deepspeed" in flag:
        pytest.importorskip("deepspeed")
    fabric = build_fabric(TrainerArgs(accelerator="cuda", strategy=flag, devices=2, loggers=[]), [])
    assert type(fabric.strategy).__name__ == cls
    assert is_deepspeed(fabric) == flag.startswith("deepspeed")
    if stage is not None:
        zero = fabric.strategy.config["zero_optimization"]
        assert zero["stage"] == stage
        assert ("offload_param" in zero) == offload


def test_a_misspelt_strategy_is_refused_naming_it():
    with pytest.raises(ValueError, match="invalid strategy name: `strategy='fdsp'`"):
        build_fabric(TrainerArgs(accelerator="cpu", strategy="fdsp", devices=1, loggers=[]), [])


def test_sharded_strategies_refuse_cpu_with_lightnings_message():
    with pytest.raises(ValueError, match="FSDP"):
        build_fabric(TrainerArgs(accelerator="cpu", strategy="fsdp", devices=2, loggers=[]), [])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("strategy", ["deepspeed_stage_3", "fsdp"])
def test_rl_steps_on_gpu_train_and_export_updated_weights(strategy, tmp_path, models_dir):
    if "deepspeed" in strategy:
        pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    from rcl.rl.loop import cli_main
    from rcl.tiny_models import resolve_model
    from test_rl_loop import DIRECT, history, tiny_overrides  # importing it registers the test_char_sum reward

    out = tmp_path / strategy
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(
        out, "--trainer.accelerator", "cuda", "--trainer.devices", "1", "--trainer.strategy", strategy,
        "--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}", "--optimizer.learning_rate", "0.01")])
    train = [r for r in history(out) if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in train)
    before = load_file(Path(resolve_model("tiny-1m")) / "model.safetensors")
    after = load_file(out / "hf_model" / "model.safetensors")
    assert set(before) == set(after)
    assert any(not torch.equal(before[name], after[name].to(before[name].dtype)) for name in before)
