"""Every shipped SFT recipe and strategy fragment parses against the real entry point; strategy flags build the right
strategy classes (CUDA counts mocked on CPU); a real 2-process DDP run on CPU (gloo)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import lightning.fabric.accelerators.cuda as fabric_cuda
import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from rcl.sft import decoder_layer_policy
from rcl.sft_cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "lightning_configs"
SFT_RECIPES = sorted(p for p in CONFIGS.glob("*.yaml")
                     if not {"grpo", "models", "arms"} & set(yaml.safe_load(p.read_text()) or {}))  # not RL, eval, study
STRATEGIES = sorted((CONFIGS / "strategies").glob("*.yaml"))


def print_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_cli("fit", [*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    # DeepSpeed, when installed, logs a "[date] [WARNING] ..." line to stdout on import.
    return "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith("[20"))


@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=lambda p: p.name)
def test_recipe_parses(capsys, recipe):
    out = print_config(capsys, "--config", str(recipe))
    assert "class_path: rcl.sft.SFTModule" in out
    assert "class_path: data_modules.TeacherStudentDataModule" in out


def test_production_teacher_recipe_pins_the_original_hyper_parameters(capsys):
    import yaml

    config = yaml.safe_load(print_config(capsys, "--config", str(CONFIGS / "teacher_sft.yaml")))
    opt = config["model"]["init_args"]["optimizer"]
    assert (opt["learning_rate"], opt["warmup_ratio"], opt["weight_decay"], opt["betas"], opt["eps"]) == (
        1e-5, 0.05, 1e-4, [0.9, 0.95], 1e-8)
    assert config["trainer"]["max_epochs"] == 10 and config["trainer"]["precision"] == "bf16-mixed"
    data = config["data"]["init_args"]
    assert (data["dataset"], data["data_files"], data["schema"], data["max_length"]) == (
        "Arc-Intelligence/Arc-ATLAS-Teach-v0", "training/sft.jsonl", "atlas_sft", 16384)
    per_step = data["batch_size"] * config["trainer"]["devices"] * config["trainer"]["accumulate_grad_batches"]
    assert per_step == 16
    assert config["model"]["init_args"]["gradient_checkpointing"] is True


@pytest.mark.parametrize("fragment", STRATEGIES, ids=lambda p: p.stem)
def test_strategy_fragment_merges_onto_the_quickstart(capsys, fragment):
    out = print_config(capsys, "--config", str(CONFIGS / "quickstart_sft.yaml"), "--config", str(fragment))
    expected = "FSDPStrategy" if fragment.stem == "fsdp" else "DDPStrategy" if fragment.stem == "ddp" else "DeepSpeedStrategy"
    assert f"class_path: lightning.pytorch.strategies.{expected}" in out
    if fragment.stem.startswith("deepspeed"):
        assert f"stage: {fragment.stem.split('_')[2]}" in out
        assert ("offload_optimizer: true" in out) == fragment.stem.endswith("offload")


@pytest.fixture
def two_mocked_gpus(monkeypatch):
    monkeypatch.setattr(fabric_cuda, "num_cuda_devices", lambda: 2)
    monkeypatch.setattr(fabric_cuda, "_device_count_nvml", lambda: 2, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def build_without_running(*args: str):
    return build_cli("fit", ["--config", str(CONFIGS / "quickstart_sft.yaml"), *args], run=False)


def test_fsdp_fragment_builds_fsdp_with_the_decoder_policy(two_mocked_gpus):
    cli = build_without_running("--config", str(CONFIGS / "strategies" / "fsdp.yaml"), "--trainer.accelerator", "gpu",
                                "--trainer.devices", "2", "--trainer.precision", "bf16-mixed")
    strategy = cli.trainer.strategy
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"] is decoder_layer_policy
    assert strategy.kwargs["use_orig_params"] is True and strategy._state_dict_type == "full"
    assert cli.trainer.num_devices == 2


def test_fsdp_flag_builds_fsdp_on_mocked_gpus(two_mocked_gpus):
    cli = build_without_running("--trainer.strategy", "fsdp", "--trainer.accelerator", "gpu", "--trainer.devices", "2")
    assert isinstance(cli.trainer.strategy, FSDPStrategy)


def test_fsdp_on_cpu_is_refused_with_lightnings_message():
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        build_without_running("--trainer.strategy", "fsdp", "--trainer.accelerator", "cpu")


@pytest.mark.parametrize("flag,stage,offload", [("deepspeed_stage_2", 2, False), ("deepspeed_stage_3", 3, False),
                                                ("deepspeed_stage_3_offload", 3, True)])
def test_deepspeed_flags(two_mocked_gpus, flag, stage, offload):
    args = ("--trainer.strategy", flag, "--trainer.accelerator", "gpu", "--trainer.devices", "2")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(Exception, match="DeepSpeed"):
            build_without_running(*args)
        return
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = build_without_running(*args).trainer.strategy
    assert isinstance(strategy, DeepSpeedStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage and ("offload_optimizer" in zero) == offload


def test_links_tokenizer_and_clipping():
    cli = build_without_running("--model.init_args.model_name_or_path", "some/model",
                                "--model.init_args.optimizer.max_grad_norm", "0.5")
    assert cli.datamodule.tokenizer_name_or_path == "some/model"
    assert cli.trainer.gradient_clip_val == 0.5


def test_ddp_flag_builds_ddp_on_cpu():
    cli = build_without_running("--trainer.strategy", "ddp", "--trainer.devices", "2")
    assert isinstance(cli.trainer.strategy, DDPStrategy) and cli.trainer.num_devices == 2


def test_ddp_two_processes_on_cpu(tmp_path, repo_env, tiny_model_dir):
    root = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "rcl", "fit", "--config", "lightning_configs/quickstart_sft.yaml",
         "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
         "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.num_sanity_val_steps", "0",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
         "--model.init_args.model_name_or_path", tiny_model_dir, "--model.init_args.val_generation_samples", "2",
         "--data.init_args.synthetic_size", "100", "--data.init_args.val_size", "8", "--data.init_args.batch_size", "4"],
        cwd=ROOT, env=repo_env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "hf_model" / "model.safetensors").is_file()
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


def test_a_single_configured_callback_keeps_the_default_checkpointing():
    cli = build_without_running("--trainer.callbacks", '{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}')
    kinds = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"LearningRateMonitor", "ModelCheckpoint"} <= kinds


def write_generic_rows(path: Path, n: int) -> Path:
    import json

    rows = [{"question": f"What is {i}+{i % 7}?", "solution": f"<solution>{i + i % 7}</solution>",
             "answer": str(i + i % 7)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sixty_generic_rows_start_the_student_sft_in_one_command(tmp_path, tiny_model_dir):
    rows = write_generic_rows(tmp_path / "mine.jsonl", 60)
    cli = build_cli("fit", [
        "--config", str(CONFIGS / "quickstart_student_sft.yaml"),
        "--config", str(CONFIGS / "data" / "generic_rows.yaml"),
        "--data.init_args.dataset", str(rows), "--trainer.default_root_dir", str(tmp_path / "run"),
        # only to keep the test short:
        "--model.init_args.model_name_or_path", tiny_model_dir, "--trainer.max_steps", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.val_check_interval", "2"])
    assert cli.trainer.global_step == 2
    assert (len(cli.datamodule.train_set), len(cli.datamodule.val_set)) == (54, 6)  # val_size 0.1 of 60
