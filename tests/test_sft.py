"""SFTModule: metric maths, a tiny CPU run through the real CLI (learns, logs, exports a reloadable HF folder), resume."""

import csv
import math
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
    """A run folder's (or a logger version folder's) CSV metrics."""
    return list(csv.DictReader((root / "metrics.csv" if (root / "metrics.csv").exists() else
                                root / "csv" / "metrics.csv").open()))


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
    first_session = (root / "csv" / "metrics.csv").read_text()
    cli = build_cli("fit", tiny_args(root, tiny_model_dir, 10, "--ckpt_path", str(ckpt)))
    assert cli.trainer.global_step == 10
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 10  # the schedule continues from the restored step
    args = cli.model.optimizer_args
    assert scheduler.get_last_lr()[0] == pytest.approx(args.learning_rate * lr_factor(10, 10, args))
    # the resumed session logs into a version folder of its own; the first session's log is kept as it was
    assert (root / "csv" / "metrics.csv").read_text() == first_session
    steps = [int(r["step"]) for r in read_metrics(root / "csv" / "resumed-last") if r.get("train/loss")]
    assert steps and min(steps) >= 5  # 4 resumed steps log only late steps; a restart from 0 would log 1 and 3
    assert (root / "config-resumed-last.yaml").is_file() and "overwrite: false" in (root / "config.yaml").read_text()


def test_resume_mid_epoch_continues_with_the_next_batches(tmp_path, tiny_model_dir):
    """18 batches an epoch, cut after 3: the resumed run must train on batches 4-6 of the same shuffled epoch (a
    plain DataLoader restarted the epoch and replayed batches 1-3)."""
    from safetensors.torch import load_file

    constant = ["--model.init_args.optimizer.schedule", "constant", "--model.init_args.optimizer.warmup_ratio", "0"]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    build_cli("fit", tiny_args(cut, tiny_model_dir, 3, *constant))
    build_cli("fit", tiny_args(whole, tiny_model_dir, 6, *constant))
    resumed = build_cli("fit", tiny_args(cut, tiny_model_dir, 6, *constant, "--trainer.val_check_interval", "3",
                                         "--ckpt_path", str(cut / "checkpoints" / "last.ckpt")))
    assert resumed.trainer.global_step == 6
    a, b = load_file(whole / "hf_model" / "model.safetensors"), load_file(cut / "hf_model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_token_totals_count_every_micro_batch_and_survive_a_resume(tmp_path, tiny_model_dir, monkeypatch):
    """`train/tokens_seen` and `train/loss_tokens_seen` are running totals over every micro-batch trained on (here 2
    per step), and a resumed run goes on counting from its checkpoint."""
    seen = []
    training_step = SFTModule.training_step

    def recording(self, batch, batch_idx):
        seen.append((int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != -100).sum())))
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(SFTModule, "training_step", recording)
    root = tmp_path / "run"
    every_step = ["--trainer.log_every_n_steps", "1", "--trainer.accumulate_grad_batches", "2"]
    build_cli("fit", tiny_args(root, tiny_model_dir, 2, *every_step))
    rows = [r for r in read_metrics(root) if r.get("train/tokens_seen")]
    after_step = {int(r["step"]): float(r["train/tokens_seen"]) for r in rows}  # a step's last row: after it
    assert len(seen) == 4 and after_step == {0: sum(t for t, _ in seen[:2]), 1: sum(t for t, _ in seen)}
    assert float(rows[-1]["train/loss_tokens_seen"]) == sum(n for _, n in seen)
    assert 0 < sum(n for _, n in seen) < sum(t for t, _ in seen)
    build_cli("fit", tiny_args(root, tiny_model_dir, 3, *every_step,
                               "--ckpt_path", str(root / "checkpoints" / "last.ckpt")))
    resumed = [r for r in read_metrics(root / "csv" / "resumed-last") if r.get("train/tokens_seen")]
    assert len(seen) == 6
    assert float(resumed[-1]["train/tokens_seen"]) == sum(t for t, _ in seen)
    assert float(resumed[-1]["train/loss_tokens_seen"]) == sum(n for _, n in seen)


def test_a_rerun_refuses_to_replace_the_earlier_run_unless_told(tmp_path, tiny_model_dir):
    from rcl.run_dir import RunFolderInUse

    root = tmp_path / "run"
    build_cli("fit", tiny_args(root, tiny_model_dir, 2))
    before = (root / "csv" / "metrics.csv").read_text()
    with pytest.raises(RunFolderInUse, match=r"holds an earlier run \(config\.yaml, checkpoints/, csv/, tensorboard/, "
                                             r"hf_model/\): resume it with --ckpt_path .*last\.ckpt, replace it with "
                                             r"--overwrite true, or write this run elsewhere with "
                                             r"--trainer\.default_root_dir DIR"):
        build_cli("fit", tiny_args(root, tiny_model_dir, 4))
    assert (root / "csv" / "metrics.csv").read_text() == before
    cli = build_cli("fit", tiny_args(root, tiny_model_dir, 4, "--overwrite", "true"))
    assert cli.trainer.global_step == 4
    assert max(int(r["step"]) for r in read_metrics(root)) == 3  # the new run's log (logged every 2 steps: 1, 3)


def test_a_bad_model_path_is_one_line_and_makes_no_folder(tmp_path, tiny_model_dir, capsys):
    from rcl.sft_cli import cli_main

    root = tmp_path / "run"
    missing = str(tmp_path / "runs" / "sft" / "hf_model")
    with pytest.raises(SystemExit) as stop:
        cli_main("fit", tiny_args(root, missing, 2))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"rcl: model.init_args.model_name_or_path: model folder not found: {missing}")
    assert not any("Traceback" in line for line in err)
    assert not root.exists()


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


def test_a_run_whose_output_is_not_a_terminal_prints_progress_lines(tmp_path, tiny_model_dir, capsys):
    build_cli("fit", tiny_args(tmp_path / "run", tiny_model_dir, 6, "--trainer.enable_progress_bar", "true"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sft step ")]
    # one line every log_every_n_steps (2) optimizer steps
    assert [line.split(" | ")[0] for line in lines] == ["sft step 2/6", "sft step 4/6", "sft step 6/6"]
    loss, speed, elapsed, eta = lines[0].split(" | ")[1:]
    assert loss.startswith("loss ") and float(loss.split()[1]) > 0
    assert speed.endswith(" tokens/s") and float(speed.split()[0]) > 0
    assert elapsed.startswith("elapsed ") and eta.startswith("eta ")
    assert lines[-1].endswith("eta 0s")


def test_a_step_labelled_bar_on_a_terminal(monkeypatch):
    from types import SimpleNamespace

    import rcl.progress

    monkeypatch.setattr(rcl.progress, "is_terminal", lambda stream=None: True)
    bar = rcl.progress.sft_progress_bar(10)
    monkeypatch.setattr(type(bar), "trainer", property(lambda self: SimpleNamespace(max_epochs=-1)))
    assert bar._get_train_description(0) == "Epoch 0"  # Lightning's own label: "Epoch 0/-2"


def test_sigint_saves_a_checkpoint_that_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir, repo_env):
    from interrupt_support import interrupt_once_stepping, resume_argv

    # one batch per epoch (24 training rows, batch 32) and a constant learning rate, so neither the data order inside
    # an epoch nor the schedule's length depends on where the run was cut
    common = ["--data.init_args.synthetic_size", "32", "--data.init_args.val_size", "8", "--data.init_args.batch_size",
              "32", "--model.init_args.optimizer.schedule", "constant", "--model.init_args.optimizer.warmup_ratio", "0",
              "--trainer.enable_progress_bar", "true", "--trainer.log_every_n_steps", "1"]
    root = tmp_path / "interrupted"
    code, stderr = interrupt_once_stepping(
        tiny_args(root, tiny_model_dir, 100000, *common), repo_env,
        started=lambda: "sft step 2/" in (tmp_path / "logs" / "stdout.txt").read_text(), log_dir=tmp_path / "logs")
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    line, argv = resume_argv(stderr)
    step = int(line.split("after step ")[1].split(";")[0])
    assert argv[-2:] == ["--ckpt_path", str(root / "checkpoints" / "last.ckpt")]
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step
    assert not (root / "hf_model").exists(), "an interrupted run is not exported as if it had finished"
    resumed = build_cli("fit", [*argv, "--trainer.max_steps", str(step + 2)])
    full = build_cli("fit", tiny_args(tmp_path / "full", tiny_model_dir, step + 2, *common))
    assert resumed.trainer.global_step == full.trainer.global_step == step + 2
    for name, value in full.model.model.state_dict().items():
        # the rows of the one batch come in another order after the resume: the same sums, in another order
        torch.testing.assert_close(resumed.model.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)
