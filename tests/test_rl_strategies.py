"""Strategy flags build the right Fabric strategies (they need GPUs to run: see the gpu-marked test)."""

import os
from pathlib import Path
from unittest import mock

import pytest
import torch

from rcl.rl.args import TrainerArgs
from rcl.rl.loop import build_fabric, is_deepspeed

ROOT = Path(__file__).resolve().parents[1]


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
    assert is_deepspeed(fabric) == (cls == "DeepSpeedStrategy")
    if stage is not None:
        zero = fabric.strategy.config["zero_optimization"]
        assert zero["stage"] == stage
        assert ("offload_param" in zero) == offload


def test_sharded_strategies_refuse_cpu_with_lightnings_message():
    with pytest.raises(ValueError, match="FSDP"):
        build_fabric(TrainerArgs(accelerator="cpu", strategy="fsdp", devices=2, loggers=[]), [])


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 1 or not os.environ.get("RCL_RUN_GPU_TESTS"), reason="needs a GPU")
@pytest.mark.parametrize("strategy", ["deepspeed_stage_3", "fsdp"])
def test_rl_steps_on_gpu(strategy, tmp_path, models_dir):
    from rcl.rl.loop import cli_main

    cli_main("fit", [
        "--config", str(ROOT / "lightning_configs" / "quickstart_direct.yaml"),
        "--teacher.model_name_or_path", "tiny-1m", "--trainer.accelerator", "cuda", "--trainer.devices", "1",
        "--trainer.strategy", strategy, "--trainer.max_steps", "2", "--trainer.out_dir", str(tmp_path),
        "--eval.num_prompts", "4",
    ])
    assert (tmp_path / "hf_model" / "model.safetensors").exists()
