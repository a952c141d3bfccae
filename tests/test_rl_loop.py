"""The RL loop on tiny models: metrics and files, parameter updates, exact resume, config errors."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from callbacks.base import FabricCallback
from rcl.rewards import available_rewards, register_reward
from rcl.rl.loop import cli_main
from rcl.tiny_models import resolve_model

ROOT = Path(__file__).resolve().parents[1]
RCL = str(ROOT / "lightning_configs" / "quickstart_rcl.yaml")
DIRECT = str(ROOT / "lightning_configs" / "quickstart_direct.yaml")
KL_TO_SYNCED_REFERENCE = ("--grpo.beta", "0.05", "--grpo.sync_ref_model", "true", "--grpo.ref_model_sync_steps", "1")

if "test_char_sum" not in available_rewards():

    @register_reward("test_char_sum")
    class CharSum:
        """A reward that varies between random completions, so untrained models get non-zero advantages."""

        def __call__(self, samples):
            return [float(sum(map(ord, s.completion)) % 5) for s in samples]


def tiny_overrides(out_dir: Path, *extra: str) -> list[str]:
    return [
        "--teacher.model_name_or_path", "tiny-1m",
        "--student.model_name_or_path", "tiny-1m",
        "--trainer.out_dir", str(out_dir),
        "--trainer.loggers", "[csv]",
        "--trainer.max_steps", "2",
        "--grpo.prompts_per_step", "2",
        "--grpo.num_generations", "3",
        "--grpo.micro_batch_size", "4",
        "--grpo.baseline_samples", "2",
        "--grpo.student_samples", "1",
        "--grpo.max_probe_tokens", "4",
        "--generation.max_completion_length", "8",
        "--generation.student_max_tokens", "6",
        "--eval.num_prompts", "3",
        "--data.init_args.synthetic_size", "200",
        "--data.init_args.val_size", "20",
        *extra,
    ]


def history(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "history.jsonl").read_text().splitlines()]


def checkpoint(out_dir: Path, step: int) -> dict:
    return torch.load(out_dir / "checkpoints" / f"step-{step:06d}.ckpt", weights_only=True)


def base_weights() -> dict[str, torch.Tensor]:
    return load_file(Path(resolve_model("tiny-1m")) / "model.safetensors")


def test_adaptive_teaching_run_logs_teaching_metrics_and_exports(models_dir, tmp_path):
    out = tmp_path / "run"
    # an untrained student never answers right, so the teaching reward alone is 0 everywhere and nothing would train
    cli_main("fit", ["--config", RCL, *tiny_overrides(out, "--reward.functions",
                                                      "{adaptive_teaching: 1.0, test_char_sum: 1.0}")])
    rows = history(out)
    train = [r for r in rows if "reward" in r]
    evals = [r for r in rows if "eval/ndr" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert [r["step"] for r in evals] == [0, 2], "evaluation before training and at the end"
    from rcl.eval.stats import jeffreys_interval

    for r in evals:  # 80% Jeffreys intervals over the 3 evaluation prompts
        for name in ("eval/accuracy", "eval/with_teaching_accuracy", "eval/baseline_accuracy", "eval/ndr"):
            assert (r[f"{name}_ci_low"], r[f"{name}_ci_high"]) == pytest.approx(jeffreys_interval(r[name] * 3, 3))
    for key in ("teaching/ndr", "teaching/tes", "teaching/learning_gain", "teaching/completion_rate",
                "teaching/baseline_accuracy", "teaching/with_teaching_accuracy", "reward", "reward_std",
                "frac_reward_zero_std", "completions/mean_length", "time/generation/policy",
                "time/generation/student", "time/reward", "time/training", "rewards/adaptive_teaching/mean",
                "tokens/policy", "tokens/student", "lr"):
        assert key in train[-1], key
    assert train[-1]["teaching/probe_tokens_mean"] <= 4
    assert train[-1]["completions/max_length"] <= 8
    assert (out / "csv" / "metrics.csv").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002.ckpt"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(out / "hf_model").state_dict()
    trained = checkpoint(out, 2)["model"]
    # the degradation tracker's NDR window travels with the checkpoint: 2 steps x 2 prompts x 3 teachings
    assert len(checkpoint(out, 2)["degradation_window/degradations.jsonl"]) == 12
    assert set(exported) == set(trained)
    assert [name for name in trained if not torch.equal(exported[name], trained[name])] == []
    base = base_weights()
    assert any(not torch.equal(base[name], trained[name]) for name in base), "the exported weights are trained ones"
    prompt = "What is 1+1?"
    exported_ids = AutoTokenizer.from_pretrained(out / "hf_model")(prompt).input_ids
    assert exported_ids == AutoTokenizer.from_pretrained(resolve_model("tiny-1m"))(prompt).input_ids


def test_every_trainable_parameter_changes_after_one_step(models_dir, tmp_path):
    out = tmp_path / "direct"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(
        out, "--trainer.max_steps", "1", "--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}",
        "--optimizer.learning_rate", "0.01", "--eval.at_start", "false")])
    before = base_weights()
    after = load_file(out / "hf_model" / "model.safetensors")
    assert set(before) == set(after)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    step = history(out)[0]
    assert step["frac_reward_zero_std"] < 1.0
    # 2 prompts x 3 completions: the loss's tokens are the sampled ones; with the prompts, what the policy processed
    assert step["train/completion_tokens"] == step["tokens/policy"] > 0
    assert step["train/tokens"] > step["train/completion_tokens"]


def test_budget_tokens_count_each_completion_with_its_prompt():
    from types import SimpleNamespace

    from rcl.engines import Completion
    from rcl.rl.loop import budget_tokens

    rollout = SimpleNamespace(prompt_ids=[[1, 2, 3], [1, 2, 3], [7]],
                              completions=[Completion([4, 5], None, "stop", "a"), Completion([6], None, "length", "b"),
                                           Completion([8, 9, 10], None, "stop", "c")])
    assert budget_tokens(rollout) == {"train/tokens": 3 + 2 + 3 + 1 + 1 + 3, "train/completion_tokens": 6}


@pytest.mark.parametrize("objective", [(), KL_TO_SYNCED_REFERENCE], ids=["no_kl", "kl_to_synced_reference"])
def test_resume_continues_exactly_like_an_uninterrupted_run(models_dir, tmp_path, objective):
    common = ["--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}", "--eval.at_start", "false",
              "--optimizer.learning_rate", "0.001", "--trainer.max_steps", "4", "--trainer.keep_last_checkpoints", "5",
              *objective]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(full, *common, "--trainer.checkpoint_every_n_steps", "2")])
    # a second run trained only to step 2, then resumed from its own checkpoint
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(resumed, *common, "--trainer.max_steps", "2")])
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(
        resumed, *common, "--ckpt_path", str(resumed / "checkpoints" / "step-000002.ckpt"))])
    a = load_file(full / "hf_model" / "model.safetensors")
    b = load_file(resumed / "hf_model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = lambda rows: {r["step"]: (r["reward"], r["loss"], r.get("kl")) for r in rows if "reward" in r}  # noqa: E731
    assert steps(history(resumed))[4] == steps(history(full))[4]
    assert steps(history(resumed))[3] == steps(history(full))[3]
    if objective:
        ref_full, ref_resumed = checkpoint(full, 4)["ref_model"], checkpoint(resumed, 4)["ref_model"]
        assert all(torch.equal(ref_full[k], ref_resumed[k]) for k in ref_full)


def test_kl_to_a_reference_model_synced_every_step(models_dir, tmp_path):
    out = tmp_path / "kl"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(
        out, *KL_TO_SYNCED_REFERENCE, "--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}",
        "--optimizer.learning_rate", "0.001", "--eval.at_start", "false", "--trainer.checkpoint_every_n_steps", "1",
        "--trainer.keep_last_checkpoints", "5")])
    kl = {r["step"]: r["kl"] for r in history(out) if "reward" in r}
    assert kl[1] == 0.0, "the reference starts as a copy of the policy"
    assert math.isfinite(kl[2]) and kl[2] > 0
    base, first, second = base_weights(), checkpoint(out, 1), checkpoint(out, 2)
    # after every step ref <- (1 - .6) * ref + .6 * policy (the default mixup alpha)
    for name in base:
        torch.testing.assert_close(first["ref_model"][name], 0.4 * base[name] + 0.6 * first["model"][name])
        torch.testing.assert_close(second["ref_model"][name],
                                   0.4 * first["ref_model"][name] + 0.6 * second["model"][name])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grpo.prompts_per_step", "3", "--trainer.devices", "2"], "must be divisible by the 2 training processes"),
        (["--grpo.num_generations", "1"], "num_generations must be >= 2"),
        (["--grpo.sync_ref_model", "true"], "sync_ref_model needs grpo.beta > 0"),
        (["--engines.teacher.backend", "server"], "engines.teacher.urls is empty"),
        (["--engines.teacher.backend", "server", "--engines.teacher.urls", "[http://127.0.0.1:1]",
          "--engines.teacher.api", "openai"], "OpenAI-style servers take no weight pushes"),
        (["--trainer.strategy", "fsdp", "--trainer.devices", "2"], "in-process generation would need every process"),
        (["--engines.teacher.backend", "server", "--engines.teacher.urls", "[http://127.0.0.1:1]",
          "--engines.sync_every_n_steps", "2", "--grpo.importance_sampling", "off"],
         "the loss would treat them as on-policy"),
        (["--grpo.max_off_policy_steps", "1", "--grpo.importance_sampling", "off"],
         "the loss would treat them as on-policy"),
        (["--grpo.max_off_policy_steps", "1", "--grpo.num_iterations", "2"], "needs grpo.num_iterations 1"),
    ],
)
def test_impossible_configs_fail_at_start_with_the_fix(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        cli_main("fit", ["--config", RCL, *tiny_overrides(tmp_path, *extra)])


def test_evaluation_with_fewer_prompts_than_processes_is_refused():
    from types import SimpleNamespace

    from rcl.rl.args import EvalArgs
    from rcl.rl.loop import ConfigError, evaluate

    fabric = SimpleNamespace(world_size=4, global_rank=0)
    with pytest.raises(ConfigError, match="evaluation has 3 prompts for 4 processes"):
        evaluate(fabric, {}, None, [{"question": "q", "ground_truth": "1"}] * 3, None, EvalArgs(num_prompts=64), 0)


def test_ddp_two_processes_on_cpu(models_dir, tmp_path, repo_env):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = tiny_overrides(out, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                          "--eval.at_start", "false", "--grpo.prompts_per_step", "4")
    repo_env["RCL_MODELS_DIR"] = str(models_dir)
    proc = subprocess.run([sys.executable, "-m", "rcl", "fit", "--config", DIRECT, *args], cwd=ROOT, env=repo_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [r for r in history(out) if "reward" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert (out / "hf_model" / "model.safetensors").exists()


def test_several_iterations_per_rollout_use_the_clipped_ratio(models_dir, tmp_path):
    out = tmp_path / "iters"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(
        out, "--grpo.num_iterations", "2", "--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}",
        "--optimizer.learning_rate", "0.05", "--eval.at_start", "false")])
    train = [r for r in history(out) if "reward" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert train[0]["reward"] == train[1]["reward"], "both optimizer steps train on the same rollout"
    assert train[0]["clip_ratio/region_mean"] == 0.0, "the first step is on-policy: ratio 1, nothing clipped"
    assert train[1]["clip_ratio/region_mean"] > 0.0, "after a large step the ratio leaves [1-eps, 1+eps]"


if "test_constant" not in available_rewards():

    @register_reward("test_constant")
    class Constant:
        """Every completion ties: every group has zero std, so every advantage is exactly 0."""

        def __call__(self, samples):
            return [1.0 for _ in samples]


@pytest.mark.parametrize("stop_at", [1, 3], ids=["between_iterations", "max_steps_not_a_multiple"])
def test_resume_between_two_passes_over_one_rollout_is_exact(models_dir, tmp_path, stop_at):
    """With num_iterations 2 a checkpoint at an odd step lies inside a rollout: the resumed run must finish that
    rollout's second pass instead of drawing a fresh rollout."""
    common = ["--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}", "--eval.at_start", "false",
              "--optimizer.learning_rate", "0.01", "--grpo.num_iterations", "2", "--trainer.keep_last_checkpoints", "5"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(full, *common, "--trainer.max_steps", "4")])
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(resumed, *common, "--trainer.max_steps", str(stop_at))])
    assert checkpoint(resumed, stop_at)["pending"]["next_iteration"] == 1, "the checkpoint holds the open rollout"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(
        resumed, *common, "--trainer.max_steps", "4",
        "--ckpt_path", str(resumed / "checkpoints" / f"step-{stop_at:06d}.ckpt"))])
    steps = lambda rows: {r["step"]: (r["reward"], r["loss"]) for r in rows if "reward" in r}  # noqa: E731
    uninterrupted, continued = steps(history(full)), steps(history(resumed))
    assert uninterrupted[stop_at + 1][0] == uninterrupted[stop_at][0], "steps 2k-1 and 2k share a rollout"
    assert {s: continued[s] for s in range(stop_at + 1, 5)} == {s: uninterrupted[s] for s in range(stop_at + 1, 5)}
    a = load_file(full / "hf_model" / "model.safetensors")
    b = load_file(resumed / "hf_model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint(full, 4)["pending"] == {}, "a finished rollout leaves nothing pending"


def _zero_advantage_step(fabric, extra_module: bool = False, packed: list | None = None) -> dict:
    """One `train_step` on a rollout whose every advantage is 0 (all groups tie); returns the gradients the
    optimizer saw (None for parameters without one)."""
    from transformers import AutoModelForCausalLM

    from rcl.engines import Completion
    from rcl.rl import loop
    from rcl.rl.args import GenerationArgs, GRPOArgs
    from rcl.rl.rollout import Rollout

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-1m"))
    if extra_module:
        model.unreached = torch.nn.Linear(2, 2)  # never used by the forward
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = fabric.setup(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    captured = {}
    real_step = optimizer.step

    def record_then_step(*args, **kwargs):
        captured.update({n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()})
        return real_step(*args, **kwargs)

    optimizer.step = record_then_step
    if packed is not None:  # record the rows of every micro-batch the step packs
        real_pack = loop._pack
        loop._pack = lambda rollout, index, *a: packed.append(list(index)) or real_pack(rollout, index, *a)
    completions = [Completion([7, 8, 9], None, "length", "x") for _ in range(4)]
    rollout = Rollout([[5, 6]] * 4, completions, [], torch.ones(4), {}, torch.zeros(4), torch.ones(2, dtype=torch.bool),
                      {}, {}, 2)
    state = {"model": model, "optimizer": optimizer, "ref_model": None,
             "scheduler": scheduler}
    try:
        stats = loop.train_step(fabric, state, rollout, GRPOArgs(loss_type="dapo", beta=0.0, micro_batch_size=2),
                                GenerationArgs(max_completion_length=3), loop.DEFAULT_OPTIMIZER, [0], None)
    finally:
        if packed is not None:
            loop._pack = real_pack
    return {"grads": captured, "stats": stats}


def test_all_tied_groups_under_fp16_with_a_grad_scaler_step_like_a_full_pass(models_dir):
    """beta 0, dapo, one process and every group tied: the fast path used to skip every backward, so the
    GradScaler's scale was never set and unscale_ asserted ("_scale is None"). A CPU GradScaler stands in for CUDA's
    (Lightning turns a plain 16-mixed into bf16-mixed on CPU)."""
    from lightning.fabric import Fabric
    from lightning.fabric.plugins.precision import MixedPrecision

    precision = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[precision])
    packed = []
    out = _zero_advantage_step(fabric, packed=packed)
    assert packed == [[0]], "one row carries the backward, not a whole micro-batch"
    assert out["stats"]["loss"] == 0.0 and out["stats"]["grad_norm"] == 0.0
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in out["grads"].values())


def test_zero_advantage_fast_path_leaves_unreached_parameters_without_gradients(models_dir):
    """The all-skip step runs one real micro-batch: parameters the forward never reaches keep grad None (AdamW skips
    them) instead of getting zeros (on which AdamW would still decay and step)."""
    from lightning.fabric import Fabric

    grads = _zero_advantage_step(Fabric(accelerator="cpu", devices=1), extra_module=True)["grads"]
    unreached = {n: g for n, g in grads.items() if "unreached" in n}
    assert len(unreached) == 2 and all(g is None for g in unreached.values()), unreached.keys()
    reached = {n: g for n, g in grads.items() if "unreached" not in n}
    assert reached and all(g is not None and torch.count_nonzero(g) == 0 for g in reached.values())


def test_the_process_count_fabric_launched_must_divide_the_prompts(tmp_path):
    """`devices: auto`, `-1` or a list were counted as one process by the start checks, so 10 prompts on 4 processes
    passed and each process trained on 10 // 4 = 2 of them. `main` checks against the launched world size."""
    from types import SimpleNamespace

    from rcl.rl import loop
    from rcl.rl.args import GRPOArgs, TrainerArgs

    fabric = SimpleNamespace(world_size=4, global_rank=0, barrier=lambda: None)
    with pytest.raises(loop.ConfigError, match="prompts_per_step=10 must be divisible by the 4 training processes"):
        loop.main(fabric, None, TrainerArgs(out_dir=str(tmp_path / "run")), None, None, GRPOArgs(prompts_per_step=10),
                  None, None, None, None, None, None, None)
    assert not (tmp_path / "run").exists()


def train_rows(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows if "reward" in r]


def test_a_rerun_refuses_to_replace_the_earlier_run_unless_told(models_dir, tmp_path):
    out = tmp_path / "run"
    args = ["--config", DIRECT, *tiny_overrides(out, "--trainer.max_steps", "1", "--eval.at_start", "false")]
    cli_main("fit", args)
    before = (out / "history.jsonl").read_text()
    with pytest.raises(SystemExit, match=r"holds an earlier run \(history\.jsonl, checkpoints/, csv/, hf_model/\): "
                                         r"resume it with --ckpt_path .*step-000001\.ckpt, replace it with "
                                         r"--overwrite true, or write this run elsewhere with --trainer\.out_dir DIR"):
        cli_main("fit", args)
    assert (out / "history.jsonl").read_text() == before
    (out / "quickstart.png").write_bytes(b"a plot of the earlier history")
    (out / "notes.txt").write_text("not rcl's")
    cli_main("fit", [*args, "--trainer.max_steps", "2", "--overwrite", "true"])
    assert train_rows(history(out)) == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002.ckpt"]
    assert not (out / "quickstart.png").exists(), "a plot of the replaced history goes with it"
    assert (out / "notes.txt").read_text() == "not rcl's"


def test_a_bad_model_path_is_one_line_and_makes_no_folder(models_dir, tmp_path, capsys):
    out = tmp_path / "run"
    missing = str(tmp_path / "runs" / "sft" / "hf_model")
    with pytest.raises(SystemExit) as stop:
        cli_main("fit", ["--config", RCL, *tiny_overrides(out, "--teacher.model_name_or_path", missing)])
    message = str(stop.value)
    assert message.startswith(f"rcl: teacher.model_name_or_path: model folder not found: {missing} (is it the export "
                              "of a run that has not run yet")
    assert "\n" not in message
    assert not out.exists()
    with pytest.raises(SystemExit, match=r"^rcl: data: data file not found: .*absent\.jsonl$"):
        cli_main("fit", ["--config", RCL, *tiny_overrides(out, "--data.init_args.dataset",
                                                          str(tmp_path / "absent.jsonl"))])
    assert not out.exists()


def test_resume_from_an_earlier_checkpoint_cuts_the_logs_back_to_its_step(models_dir, tmp_path):
    out = tmp_path / "run"
    args = ["--config", DIRECT, *tiny_overrides(
        out, "--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}", "--optimizer.learning_rate",
        "0.001", "--trainer.max_steps", "4", "--trainer.checkpoint_every_n_steps", "2",
        "--trainer.keep_last_checkpoints", "5", "--logging.sample_every_n_steps", "1", "--eval.every_n_steps", "2")]
    cli_main("fit", args)
    first = history(out)
    def samples() -> list[int]:
        return [json.loads(line)["step"] for line in (out / "samples.jsonl").read_text().splitlines()]

    assert sorted(set(samples())) == [1, 2, 3, 4]
    # resumed from step 2 of a run that went on to step 4: steps 3 and 4 are logged once, by the resumed run
    cli_main("fit", [*args, "--ckpt_path", str(out / "checkpoints" / "step-000002.ckpt")])
    again = history(out)
    assert train_rows(again) == [1, 2, 3, 4]
    assert [r["step"] for r in again if "eval/accuracy" in r] == [0, 2, 4]
    def untimed(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "sync/"))} for r in rows]

    assert untimed(again) == untimed(first), "an exact resume logs what the uninterrupted run logged"
    assert samples() == sorted(samples()) and len(samples()) == 4 * len(set(samples()))


def test_sigint_saves_a_checkpoint_that_resumes_to_the_uninterrupted_result(models_dir, tmp_path, repo_env):
    from interrupt_support import interrupt_once_stepping, resume_argv

    common = ["--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}", "--eval.at_start", "false",
              "--optimizer.learning_rate", "0.001", "--callbacks", "[{class_path: test_rl_loop.RegisterTestReward}]"]
    out = tmp_path / "interrupted"
    repo_env["RCL_MODELS_DIR"] = str(models_dir)
    repo_env["PYTHONPATH"] = str(ROOT / "tests") + ":" + repo_env["PYTHONPATH"]
    # a run far too long to end by itself, interrupted once it has logged a step
    code, stderr = interrupt_once_stepping(
        ["--config", DIRECT, *tiny_overrides(out, *common, "--trainer.max_steps", "100000")], repo_env,
        started=lambda: (out / "history.jsonl").exists() and "reward" in (out / "history.jsonl").read_text(),
        log_dir=tmp_path / "logs")
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    line, argv = resume_argv(stderr)
    step = int(line.split("after step ")[1].split(";")[0])
    assert argv[-2:] == ["--ckpt_path", str(out / "checkpoints" / f"step-{step:06d}.ckpt")]
    assert not (out / "hf_model").exists(), "an interrupted run is not exported as if it had finished"
    # resumed two steps further, it ends exactly where an uninterrupted run of that length ends
    cli_main("fit", [*argv, "--trainer.max_steps", str(step + 2)])
    full = tmp_path / "full"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(full, *common, "--trainer.max_steps", str(step + 2))])
    rewards = lambda run: {r["step"]: (r["reward"], r["loss"]) for r in history(run) if "reward" in r}  # noqa: E731
    assert rewards(out) == rewards(full)
    a, b = load_file(full / "hf_model" / "model.safetensors"), load_file(out / "hf_model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


class RegisterTestReward(FabricCallback):
    """Importing this module (for this callback) registers `test_char_sum` in a training subprocess too."""


def test_gsm8k_quickstart_trains_on_the_task_and_logs_verifier_counts(models_dir, tmp_path):
    out = tmp_path / "gsm8k"
    cli_main("fit", ["--config", str(ROOT / "lightning_configs" / "quickstart_gsm8k.yaml"), *tiny_overrides(
        out, "--trainer.max_steps", "1", "--eval.at_start", "false")])
    train = [r for r in history(out) if "reward" in r]
    assert train[0]["verifier/checks"] == 2 * 3, "every policy answer was checked by the task"
    assert train[0]["verifier/errors"] == 0 and train[0]["verifier/timeouts"] == 0
    assert 0.0 <= train[0]["accuracy"] <= 1.0
    assert any("eval/accuracy" in r for r in history(out))


def test_validate_on_a_trained_folder_writes_its_own_rows_not_the_training_history(models_dir, tmp_path):
    out = tmp_path / "run"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(out, "--reward.functions", "{test_char_sum: 1.0}",
                                                         "--reward.kwargs", "{}", "--eval.at_start", "false")])
    before = (out / "history.jsonl").read_text()
    ckpt = out / "checkpoints" / "step-000002.ckpt"
    cli_main("validate", ["--config", DIRECT, *tiny_overrides(out, "--ckpt_path", str(ckpt))])
    assert (out / "history.jsonl").read_text() == before, "training history untouched"
    (row,) = [json.loads(line) for line in (out / "validate.jsonl").read_text().splitlines()]
    assert row["step"] == 2 and 0.0 <= row["eval/accuracy"] <= 1.0
