"""Asynchronous rollouts (`grpo.max_off_policy_steps`): the pipeline's schedule, staleness and waits in the logs,
the importance-sampling stats, both quickstart protocols, and an exact resume."""

import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from test_rl_loop import DIRECT, RCL, history, tiny_overrides

from rcl.engines import Completion
from rcl.rl.async_rollouts import RolloutPipeline, VersionedEngine, staleness
from rcl.rl.loop import cli_main
from rcl.rl.rollout import Rollout

TRAIN = ["--reward.functions", "{test_char_sum: 1.0}", "--reward.kwargs", "{}", "--eval.at_start", "false",
         "--optimizer.learning_rate", "0.001"]


def fake_rollout(version: int) -> Rollout:
    c = Completion([1, 2], [-0.5, -0.5], "stop", "x", weights_version=version)
    return Rollout([[3]], [c], [], torch.zeros(1), {}, torch.zeros(1), torch.zeros(1, dtype=torch.bool), {}, {}, 1)


def test_rollout_k_is_sampled_with_the_weights_of_step_k_minus_n():
    version = {"now": 0}
    drawn, started = [], []

    def generate(rows, seed):
        started.append((rows[0], version["now"]))
        time.sleep(0.01)
        return fake_rollout(version["now"])

    def draw(k):
        drawn.append(k)
        return [k], k

    pipe = RolloutPipeline(generate, draw, max_off_policy_steps=2, max_steps=6, first_step=0)
    try:
        for step in range(6):
            rollout = pipe.take(step)
            assert staleness(rollout, step).tolist() == [float(min(step, 2))]
            pipe.drain()  # what a push does first
            version["now"] = step + 1
            pipe.fill(step + 1)
        assert drawn == [0, 1, 2, 3, 4, 5], "each step's prompts are drawn once, in order, never past max_steps"
        assert started == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 2), (5, 3)]
        timings = pipe.pop_timings()
        assert set(timings) == {"time/trainer_wait", "time/server_wait", "time/push_wait"}
        assert timings["time/trainer_wait"] > 0 and pipe.pop_timings()["time/trainer_wait"] == 0.0
    finally:
        pipe.close()


def test_a_pipeline_resumes_from_its_generated_rollouts():
    pipe = RolloutPipeline(lambda rows, seed: fake_rollout(seed), lambda k: ([k], k), 2, 10, first_step=3)
    pipe.fill(3)
    state = pipe.state_dict()
    pipe.close()
    assert [k for k, _ in state["rollouts"]] == [3, 4, 5]
    drawn = []
    resumed = RolloutPipeline(lambda rows, seed: fake_rollout(seed), lambda k: (drawn.append(k) or [k], k), 2, 10,
                              first_step=3, ready=RolloutPipeline.ready_from_state(state))
    try:
        assert resumed.take(3).completions[0].weights_version == 3 and drawn == []
        resumed.fill(4)
        assert drawn == [6]
    finally:
        resumed.close()


def test_versioned_engine_tags_completions_with_the_live_step_or_the_last_push():
    class Live:
        tokenizer = None

        def generate(self, prompts, params):
            return [[Completion([1], [0.0], "stop", "")]]

    class Served(Live):
        def update_weights(self, named, bucket_bytes=0):
            return {}

    step = {"now": 4}
    live = VersionedEngine(Live(), lambda: step["now"])
    assert live.generate([[1]], None)[0][0].weights_version == 4 and not live.pushable
    served = VersionedEngine(Served(), lambda: step["now"])
    with pytest.raises(RuntimeError, match="not received the trainer's weights"):
        served.generate([[1]], None)
    served.weights_pushed(2)
    assert served.generate([[1]], None)[0][0].weights_version == 2


def test_direct_recipe_trains_one_step_off_policy_in_process(models_dir, tmp_path):
    out = tmp_path / "async"
    threads_before = threading.active_count()
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(out, *TRAIN, "--trainer.max_steps", "3",
                                                         "--grpo.max_off_policy_steps", "1")])
    train = [r for r in history(out) if "reward" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["staleness/max"] for r in train] == [0.0, 1.0, 1.0], "step 0 and 1 both sample the start weights"
    for key in ("staleness/mean", "time/trainer_wait", "time/server_wait", "time/push_wait", "sync/seconds",
                "sync/bytes", "sync/verify_max_abs_diff", "is/ratio_mean", "is/ratio_max", "is/masked_rows_frac",
                "is/truncated_frac", "is/log_ratio_abs_mean"):
        assert key in train[-1], key
    assert train[0]["is/log_ratio_abs_mean"] < 1e-4, "on-policy at step 0: the worker's copy is the trainer"
    assert train[-1]["is/log_ratio_abs_mean"] > 1e-6, "one step stale: the sampler is the older policy"
    assert train[-1]["sync/verify_max_abs_diff"] < 1e-4
    assert threading.active_count() <= threads_before + 1, "the rollout worker and its engine threads are gone"


def test_adaptive_recipe_trains_one_step_off_policy_in_process(models_dir, tmp_path):
    out = tmp_path / "adaptive"
    cli_main("fit", ["--config", RCL, *tiny_overrides(out, "--reward.functions",
                                                      "{adaptive_teaching: 1.0, test_char_sum: 1.0}",
                                                      "--grpo.max_off_policy_steps", "1", "--eval.at_start", "false")])
    train = [r for r in history(out) if "reward" in r]
    assert [r["staleness/max"] for r in train] == [0.0, 1.0] and "teaching/ndr" in train[-1]


def test_an_async_run_resumes_exactly(models_dir, tmp_path):
    """From a checkpoint taken mid-run: it holds the rollouts already generated for steps 2 and 3 (sampled with the
    weights of steps 0 and 1, which no longer exist), so the resumed run trains on exactly those."""
    common = [*TRAIN, "--trainer.max_steps", "4", "--trainer.keep_last_checkpoints", "5",
              "--grpo.max_off_policy_steps", "2"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(full, *common, "--trainer.checkpoint_every_n_steps", "2")])
    ckpt = torch.load(full / "checkpoints" / "step-000002.ckpt", weights_only=True)
    assert [k for k, _ in ckpt["prefetched"]["rollouts"]] == [2, 3, 4][: len(ckpt["prefetched"]["rollouts"])]
    assert len(ckpt["prefetched"]["rollouts"]) == 2, "rollouts 2 and 3; rollout 4 would be past max_steps"
    cli_main("fit", ["--config", DIRECT, *tiny_overrides(
        resumed, *common, "--ckpt_path", str(full / "checkpoints" / "step-000002.ckpt"))])
    a, b = load_file(full / "hf_model" / "model.safetensors"), load_file(resumed / "hf_model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("reward", "loss", "staleness/mean", "is/ratio_mean")
    rows = lambda out: {r["step"]: tuple(r[k] for k in keys) for r in history(out) if "reward" in r}  # noqa: E731
    assert rows(resumed)[3] == rows(full)[3] and rows(resumed)[4] == rows(full)[4]
    assert rows(full)[4][2] == 2.0


def test_async_against_a_server_pushing_every_second_step(tiny_model_dir, tmp_path):
    """The server samples with weights at most N + sync_every_n_steps - 1 = 2 steps old; every push is checked."""
    from serving_support import server_env, start_server, stop_server
    from test_weight_sync import _rl_overrides

    proc, url = start_server(tiny_model_dir, server_env())
    out = tmp_path / "served"
    try:
        cli_main("fit", ["--config", DIRECT, *_rl_overrides(out, url, "--trainer.max_steps", "5",
                                                            "--grpo.max_off_policy_steps", "1",
                                                            "--engines.sync_every_n_steps", "2")])
        versions = requests_version(url)
    finally:
        stop_server(proc)
    train = [r for r in history(out) if "reward" in r]
    # rollouts 0,1 sample step 0's weights; pushes after steps 2 and 4; rollout k waits for the push of step k - 1
    assert [r["staleness/max"] for r in train] == [0.0, 1.0, 2.0, 1.0, 2.0]
    assert [r["step"] for r in train if "sync/verify_max_abs_diff" in r] == [2, 4]
    assert all(r["sync/verify_max_abs_diff"] < 1e-4 for r in train if "sync/verify_max_abs_diff" in r)
    assert versions == 4, "the start push, the pushes after steps 2 and 4, and step 5's for the final evaluation"


def requests_version(url: str) -> int:
    import requests

    return requests.get(f"{url}/weights_version/").json()["weights_version"]


def test_ddp_two_processes_each_push_to_and_check_their_own_worker(models_dir, tmp_path, repo_env):
    """Two DDP processes, each with its own in-process worker, train end to end through the pipeline (that each
    process pushes to its own worker is checked in test_weight_sync)."""
    import subprocess
    import sys

    from test_rl_loop import ROOT

    out = tmp_path / "ddp"
    dense = ["--reward.functions", "{bench_digits: 1.0}", "--reward.kwargs", "{}", "--eval.at_start", "false",
             "--optimizer.learning_rate", "0.01"]  # registered by the benchmark's trainer entry
    args = tiny_overrides(out, *dense, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                          "--trainer.accelerator", "cpu", "--grpo.prompts_per_step", "4", "--trainer.max_steps", "3",
                          "--grpo.max_off_policy_steps", "1")
    repo_env["RCL_MODELS_DIR"] = str(models_dir)
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.async_throughput", "--trainer", "--config",
                           DIRECT, *args], cwd=ROOT, env=repo_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [r for r in history(out) if "reward" in r]
    assert [r["staleness/max"] for r in train] == [0.0, 1.0, 1.0]
    assert train[-1]["is/log_ratio_abs_mean"] > 1e-6, "the steps changed the weights: the stale sampler differs"
    assert all(r["sync/verify_max_abs_diff"] < 1e-4 for r in train)
