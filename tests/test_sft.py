"""SFTModule: metric maths, a tiny CPU run through the real CLI (learns, logs, exports a reloadable HF folder), resume."""

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcl.engines import HFEngine, SamplingParams
from rcl.optim import lr_factor
from rcl.sft import SFTModule, decoder_layer_policy, split_prompt_and_target, token_accuracy_counts
from rcl.sft_cli import build_cli

RECIPE = "lightning_configs/quickstart_sft.yaml"


def test_token_accuracy_counts_hand_computed():
    # vocab 3; position t predicts label t+1. Predictions: argmax rows -> [2, 0, 1].
    logits = torch.tensor([[[0.0, 0.0, 9.0], [9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [9.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2, 1, 1]])  # targets for t=0..2 are [2, 1, 1]; all labelled
    correct, total = token_accuracy_counts(logits, labels)
    assert (int(correct), int(total)) == (2, 3)
    labels = torch.tensor([[-100, -100, 1, -100]])
    correct, total = token_accuracy_counts(logits, labels)
    assert (int(correct), int(total)) == (0, 1)


def test_split_prompt_and_target_of_a_right_padded_row():
    ids = torch.tensor([5, 6, 7, 8, 0, 0])
    labels = torch.tensor([-100, -100, 7, 8, -100, -100])
    assert split_prompt_and_target(ids, labels) == ([5, 6], [7, 8])


def test_exact_match_compares_the_greedy_completion_with_the_target(tiny_model_dir):
    module = SFTModule(tiny_model_dir, val_max_new_tokens=6)
    module.configure_model()
    module.model.eval()
    tok = module.tokenizer
    prompt = tok("hello world", add_special_tokens=False).input_ids
    greedy = HFEngine(module.model, tok).generate([prompt], SamplingParams(max_tokens=6, temperature=0.0))[0][0]
    assert greedy.text.strip(), "the test needs a prompt whose greedy completion is visible text"
    wrong = list(greedy.token_ids)
    wrong[0] = tok("Z", add_special_tokens=False).input_ids[0]
    assert tok.decode(wrong, skip_special_tokens=True).strip() != greedy.text.strip()

    def row(target: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = 10 - len(target)
        ids = torch.tensor(prompt + target + [tok.pad_token_id] * pad)
        labels = torch.tensor([-100] * len(prompt) + target + [-100] * pad)
        return ids, labels

    (ids_a, labels_a), (ids_b, labels_b) = row(list(greedy.token_ids)), row(wrong)
    batch = {"input_ids": torch.stack([ids_a, ids_b, ids_a]), "labels": torch.stack([labels_a, labels_b, labels_a])}
    assert module._exact_matches(batch, limit=2) == [True, False]
    batch["labels"][0] = -100  # a row without a target is not scored
    assert module._exact_matches(batch, limit=3) == [False, True]


def test_gradients_are_clipped_by_the_fsdp_root_under_fsdp(monkeypatch):
    """Lightning's FSDP precision refuses clipping by norm; the FSDP root module clips its sharded gradients."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    clipped = []
    strategy = FSDPStrategy()
    strategy.model = SimpleNamespace(clip_grad_norm_=clipped.append)
    module = SFTModule("tiny-1m")
    monkeypatch.setattr(SFTModule, "trainer", property(lambda self: SimpleNamespace(strategy=strategy)))
    module.configure_gradient_clipping(optimizer=None, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    assert clipped == [0.5]


def test_decoder_layer_policy_wraps_decoder_layers_only():
    class Qwen3DecoderLayer(torch.nn.Module):
        pass

    assert decoder_layer_policy(torch.nn.Linear(2, 2), recurse=True, nonwrapped_numel=10)
    assert not decoder_layer_policy(torch.nn.Linear(2, 2), recurse=False, nonwrapped_numel=10)
    assert decoder_layer_policy(Qwen3DecoderLayer(), recurse=False, nonwrapped_numel=10)


def tiny_args(root: Path, model_dir: str, steps: int, *extra: str) -> list[str]:
    return [
        "--config", RECIPE,
        "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(steps),
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--model.init_args.model_name_or_path", model_dir,
        "--model.init_args.val_generation_samples", "4",
        "--data.init_args.synthetic_size", "300",
        "--data.init_args.val_size", "16",
        "--data.init_args.batch_size", "16",
        *extra,
    ]


def read_metrics(root: Path) -> list[dict]:
    return list(csv.DictReader((root / "csv" / "metrics.csv").open()))


def test_tiny_sft_run_learns_logs_and_exports(tmp_path, tiny_model_dir):
    root = tmp_path / "run"
    cli = build_cli("fit", tiny_args(root, tiny_model_dir, 30))
    assert cli.trainer.global_step == 30
    rows = read_metrics(root)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < 0.5 * losses[0]
    val = [r for r in rows if r.get("val/loss")]
    assert len(val) == 1
    # the logged exact match is the share of the first val_generation_samples examples whose greedy completion
    # equals the target, at the weights the validation ran with (the last step's)
    batch = next(iter(cli.datamodule.val_dataloader()))
    cli.model.eval()
    matches = cli.model._exact_matches(batch, limit=4)
    assert len(matches) == 4
    assert float(val[0]["val/exact_match"]) == pytest.approx(sum(matches) / 4)
    for key in ("train/token_accuracy", "lr", "train/tokens_per_sec", "val/token_accuracy"):
        assert any(r.get(key) for r in rows), key
    # Run layout.
    assert (root / "config.yaml").is_file() and "SFTModule" in (root / "config.yaml").read_text()
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in (root / "checkpoints").glob("best-*.ckpt")] == ["best-30.ckpt"]  # the one validation
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(float(val[0]["val/loss"]))
    assert any((root / "tensorboard").iterdir())
    # The exported folder reloads with plain transformers and generates; weights equal the trained ones.
    export = root / "hf_model"
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    trained = cli.model.model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[name])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(base.model.embed_tokens.weight, model.model.embed_tokens.weight)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Question: What is 3+4?\nStudent's approach: not sure"}],
                                     tokenize=False, add_generation_prompt=True)
    out = model.generate(**tok(prompt, return_tensors="pt", add_special_tokens=False), max_new_tokens=8, do_sample=False)
    assert out.shape[1] > len(tok(prompt, add_special_tokens=False)["input_ids"])


def test_resume_continues_at_the_checkpoint_step(tmp_path, tiny_model_dir):
    root = tmp_path / "run"
    build_cli("fit", tiny_args(root, tiny_model_dir, 6))
    ckpt = root / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 6
    shutil.rmtree(root / "csv")  # so the metrics below come from the resumed session only
    cli = build_cli("fit", tiny_args(root, tiny_model_dir, 10, "--ckpt_path", str(ckpt)))
    assert cli.trainer.global_step == 10
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 10  # the schedule continues from the restored step
    args = cli.model.optimizer_args
    assert scheduler.get_last_lr()[0] == pytest.approx(args.learning_rate * lr_factor(10, 10, args))
    steps = [int(r["step"]) for r in read_metrics(root) if r.get("train/loss")]
    assert steps and min(steps) >= 5  # 4 resumed steps log only late steps; a restart from 0 would log 1 and 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_sft_run_on_gpu_bf16(tmp_path, tiny_model_dir):
    root = tmp_path / "run"
    cli = build_cli("fit", tiny_args(root, tiny_model_dir, 10, "--trainer.accelerator", "gpu", "--trainer.devices", "1",
                                     "--trainer.precision", "bf16-mixed"))
    assert cli.trainer.global_step == 10
    losses = [float(r["train/loss"]) for r in read_metrics(root) if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    trained = AutoModelForCausalLM.from_pretrained(root / "hf_model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(base.model.embed_tokens.weight, trained.model.embed_tokens.weight)
