"""LoRA (peft) in SFT and RL: trainable counts per target set, seeded init, merge maths, exports that reload, the
disabled adapter as the KL reference, the CPU refusal of bitsandbytes, and the shipped LoRA recipes."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rcl import lora
from rcl.lora import LoraArgs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "lightning_configs"


def expected_trainable(model_dir, names, r) -> int:
    """r * (in + out) per adapted linear, from the base model's own shapes."""
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(r * (m.in_features + m.out_features) for n, m in base.named_modules()
               if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in names)


@pytest.mark.parametrize("targets, names", [
    ("attention", lora.ATTENTION),
    ("all", lora.ALL_PROJECTIONS),
    (["q_proj", "down_proj"], ("q_proj", "down_proj")),
])
def test_trainable_count_matches_each_target_set(tiny_model_dir, targets, names):
    model = lora.load_for_training(tiny_model_dir, LoraArgs(enabled=True, r=4, target_modules=targets))
    trainable, total = lora.parameter_counts(model)
    assert trainable == expected_trainable(tiny_model_dir, names, 4)
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    assert f"trainable parameters: {trainable:,} of {total:,}" in lora.describe_trainable(model)


def test_modules_to_save_trains_the_whole_module(tiny_model_dir):
    model = lora.load_for_training(tiny_model_dir, LoraArgs(enabled=True, r=4, modules_to_save=["lm_head"]))
    head = AutoModelForCausalLM.from_pretrained(tiny_model_dir).lm_head.weight.numel()
    assert lora.parameter_counts(model)[0] == expected_trainable(tiny_model_dir, lora.ATTENTION, 4) + head


def lora_a(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def test_seeded_init_is_bit_identical_and_leaves_the_global_rng_alone(tiny_model_dir):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = lora_a(lora.load_for_training(tiny_model_dir, LoraArgs(enabled=True, init_seed=7)))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # a different global state must not matter
    again = lora_a(lora.load_for_training(tiny_model_dir, LoraArgs(enabled=True, init_seed=7)))
    other = lora_a(lora.load_for_training(tiny_model_dir, LoraArgs(enabled=True, init_seed=8)))
    assert first.keys() == again.keys() == other.keys() and first
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert all(not torch.equal(first[n], other[n]) for n in first)


def trained_like(model_dir, **kwargs):
    """A LoRA model whose B matrices are non-zero (as after training), so merging changes the weights."""
    model = lora.load_for_training(model_dir, LoraArgs(enabled=True, r=4, alpha=8.0, **kwargs))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_merge_maths_equals_peft_merge_and_unload(tiny_model_dir):
    model = trained_like(tiny_model_dir, target_modules="all", modules_to_save=["lm_head"])
    ours = lora.merge_lora_state({k: v.clone() for k, v in model.state_dict().items()}, 8.0 / 4)
    reference = model.merge_and_unload().state_dict()
    assert ours.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["merged", "adapter"])
def test_export_reloads_to_the_same_model(tiny_model_dir, tmp_path, mode):
    from transformers import AutoTokenizer

    model = trained_like(tiny_model_dir, modules_to_save=["lm_head"])
    out = lora.export_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / mode, mode)
    assert lora.is_adapter_folder(out) == (mode == "adapter")
    reloaded = lora.load_for_training(str(out), LoraArgs()).eval()  # an adapter folder loads merged without LoRA
    assert lora.find_peft(reloaded) is None
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    if mode == "adapter":  # and continues as a trainable adapter with LoRA on
        again = lora.load_for_training(str(out), LoraArgs(enabled=True))
        assert lora.parameter_counts(again)[0] == lora.parameter_counts(model)[0]


def test_disabled_adapter_is_the_base_model(tiny_model_dir):
    model = trained_like(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        torch.testing.assert_close(lora.DisabledAdapter(model)(input_ids=ids).logits, base(input_ids=ids).logits)
    assert not torch.allclose(adapted, base(input_ids=ids).logits)
    assert not isinstance(lora.DisabledAdapter(model), torch.nn.Module)  # checkpoints never hold a second copy


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is CPU-only")
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantised_base_is_refused_on_cpu(bits):
    with pytest.raises(lora.LoraConfigError, match="CUDA GPUs only"):
        lora.check_quantization(LoraArgs(enabled=True, quantization=bits), "cpu")
    with pytest.raises(lora.LoraConfigError, match="needs lora.enabled"):
        lora.check_quantization(LoraArgs(quantization=bits), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes needs a CUDA GPU")
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_qlora_trains_adapters_on_a_quantised_base(tiny_model_dir, bits):
    pytest.importorskip("bitsandbytes")
    args = LoraArgs(enabled=True, r=4, quantization=bits)
    lora.check_quantization(args, "cuda")
    model = lora.load_for_training(tiny_model_dir, args, device_map={"": 0})
    before = lora_a(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[5, 17, 42, 99, 3]], device="cuda")
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)


def sft_args(root: Path, model_dir: str, steps: int, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / "quickstart_sft_lora.yaml"),
        "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(steps),
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false",
        "--model.init_args.model_name_or_path", model_dir,
        "--model.init_args.val_generation_samples", "0",
        "--data.init_args.synthetic_size", "120",
        "--data.init_args.val_size", "8",
        "--data.init_args.batch_size", "8",
        *extra,
    ]


def rl_args(out: Path, teacher: str, *extra: str) -> list[str]:
    return [
        "--config", str(CONFIGS / "quickstart_rcl_lora.yaml"),
        "--grpo.protocol", "direct",
        "--teacher.model_name_or_path", teacher,
        "--student.model_name_or_path", "tiny-1m",
        "--trainer.out_dir", str(out),
        "--trainer.loggers", "[csv]",
        "--trainer.max_steps", "2",
        "--trainer.checkpoint_every_n_steps", "1",
        "--trainer.keep_last_checkpoints", "5",
        "--grpo.prompts_per_step", "2",
        "--grpo.num_generations", "3",
        "--grpo.micro_batch_size", "6",
        "--generation.max_completion_length", "8",
        "--reward.functions", "{test_lora_chars: 1.0}", "--reward.kwargs", "{}",
        "--eval.num_prompts", "2",
        "--eval.at_start", "false",
        "--data.init_args.synthetic_size", "100",
        "--data.init_args.val_size", "10",
        *extra,
    ]


def _register_char_reward():
    from rcl.rewards import available_rewards, register_reward

    if "test_lora_chars" not in available_rewards():
        @register_reward("test_lora_chars")
        class Chars:
            """Varies between random completions, so an untrained policy gets non-zero advantages."""

            def __call__(self, samples):
                return [float(sum(map(ord, s.completion)) % 5) for s in samples]


def test_sft_with_lora_exports_an_adapter_that_rl_continues_with_the_disabled_adapter_as_reference(
        tmp_path, tiny_model_dir, models_dir, caplog):
    import json

    from rcl.rl.loop import cli_main
    from rcl.sft_cli import build_cli

    _register_char_reward()
    sft_root = tmp_path / "sft"
    with caplog.at_level("INFO"):
        cli = build_cli("fit", sft_args(sft_root, tiny_model_dir, 4, "--model.init_args.lora.export", "adapter"))
    trainable, total = lora.parameter_counts(cli.model.model)
    assert f"rcl sft: LoRA trainable parameters: {trainable:,} of {total:,}" in caplog.text
    head = AutoModelForCausalLM.from_pretrained(tiny_model_dir).lm_head.weight.numel()
    assert trainable == expected_trainable(tiny_model_dir, lora.ALL_PROJECTIONS, 16) + head
    adapter = sft_root / "hf_model"
    assert lora.is_adapter_folder(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16

    out = tmp_path / "rl"
    cli_main("fit", rl_args(out, str(adapter), "--optimizer.learning_rate", "0.01"))
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if '"reward"' in line]
    # step 1 samples with the SFT adapter on, the reference is the base with it off: they already differ
    assert all(r["kl"] > 0 for r in rows)
    first = torch.load(out / "checkpoints" / "step-000001.ckpt", weights_only=True)
    second = torch.load(out / "checkpoints" / "step-000002.ckpt", weights_only=True)
    assert "ref_model" not in first  # no second copy of the weights
    changed = {n for n in first["model"] if not torch.equal(first["model"][n], second["model"][n])}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed)
    exported = AutoModelForCausalLM.from_pretrained(out / "hf_model")  # merged: a plain HF folder
    assert not lora.is_adapter_folder(out / "hf_model")
    assert set(exported.state_dict()) == set(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict())


def test_lora_recipes_pin_every_lora_key(capsys):
    import yaml

    from rcl.rl.loop import parse_recipe

    keys = set(LoraArgs.__dataclass_fields__)
    rl = yaml.safe_load((CONFIGS / "quickstart_rcl_lora.yaml").read_text())["lora"]
    sft = yaml.safe_load((CONFIGS / "quickstart_sft_lora.yaml").read_text())["model"]["init_args"]["lora"]
    assert set(rl) == keys and set(sft) == keys
    parsed = parse_recipe("fit", ["--config", str(CONFIGS / "quickstart_rcl_lora.yaml")])
    assert parsed["lora"] == LoraArgs(**rl) and parsed["lora"].enabled and parsed["grpo"].beta > 0


def test_rl_refuses_qlora_on_cpu_and_lora_with_a_synced_reference(tmp_path):
    from rcl.rl.loop import ConfigError, TrainerArgs, validate_lora
    from rcl.rl.args import GRPOArgs

    with pytest.raises(ConfigError, match="CUDA GPUs only"):
        validate_lora(LoraArgs(enabled=True, quantization="4bit"), TrainerArgs(accelerator="cpu"), GRPOArgs())
    with pytest.raises(ConfigError, match="no separate reference"):
        validate_lora(LoraArgs(enabled=True), TrainerArgs(), GRPOArgs(beta=0.1, sync_ref_model=True))


def test_lora_rl_under_ddp_two_processes_on_cpu(models_dir, tmp_path, repo_env):
    import subprocess
    import sys

    from rcl.tiny_models import resolve_model

    out = tmp_path / "ddp"
    # the bandit's rewards vary between random completions and need nothing from this test module in the children
    args = rl_args(out, "tiny-1m", "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator",
                   "cpu", "--grpo.prompts_per_step", "4", "--optimizer.learning_rate", "0.01",
                   "--task.name", "bandit", "--task.module", "rcl.tasks.envs", "--task.kwargs", "{}",
                   "--reward.functions", "{correctness: 1.0}", "--generation.max_completion_length", "2")
    repo_env["RCL_MODELS_DIR"] = str(models_dir)
    proc = subprocess.run([sys.executable, "-m", "rcl", "fit", *args], cwd=ROOT, env=repo_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LoRA policy: trainable parameters:" in proc.stdout + proc.stderr
    second = torch.load(out / "checkpoints" / "step-000002.ckpt", weights_only=True)
    assert "ref_model" not in second
    assert any("lora_B" in n and t.abs().sum() > 0 for n, t in second["model"].items()), "adapters trained"
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-1m")).state_dict()
    exported = AutoModelForCausalLM.from_pretrained(out / "hf_model").state_dict()
    assert any(not torch.equal(exported[n], base[n]) for n in base if "q_proj.weight" in n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="ZeRO-3 / FSDP runs need a CUDA GPU")
@pytest.mark.parametrize("strategy", ["deepspeed_stage_3", "fsdp"])
def test_lora_rl_under_a_sharded_strategy_on_one_gpu(models_dir, tmp_path, strategy):
    """One process, so in-process generation is allowed; the merged export goes through the sharded gather."""
    from rcl.rl.loop import cli_main
    from rcl.tiny_models import resolve_model

    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    _register_char_reward()
    out = tmp_path / strategy
    cli_main("fit", rl_args(out, "tiny-1m", "--trainer.strategy", strategy, "--trainer.accelerator", "gpu",
                            "--trainer.devices", "1", "--optimizer.learning_rate", "0.01"))
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-1m")).state_dict()
    exported = AutoModelForCausalLM.from_pretrained(out / "hf_model").state_dict()
    assert set(exported) == set(base)
    assert any(not torch.equal(exported[n], base[n]) for n in base if "q_proj.weight" in n)


def test_sft_with_lora_merged_export_reloads_as_the_trained_model(tmp_path, tiny_model_dir):
    from rcl.sft_cli import build_cli

    root = tmp_path / "sft"
    cli = build_cli("fit", sft_args(root, tiny_model_dir, 3))  # the recipe's export: merged
    assert not lora.is_adapter_folder(root / "hf_model")
    exported = AutoModelForCausalLM.from_pretrained(root / "hf_model").eval()
    trained = cli.model.model.eval()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert not torch.allclose(exported(input_ids=ids).logits, base(input_ids=ids).logits)
