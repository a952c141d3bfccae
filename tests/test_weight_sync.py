"""Weight sync end to end on CPU: train a copy one step, push it; the server's weights equal the trainer's exactly."""

import signal

from pathlib import Path

import pytest
import requests
import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import Logger
from serving_support import free_port, server_env, start_server, stop_server, trl_style_push

from callbacks.weight_sync import WeightSync
from rcl.engines import HFEngine, SamplingParams
from rcl.rewards import available_rewards, register_reward
from rcl.serving.client import ServerEngine, ServerError
from rcl.serving.weights import iter_full_state, weights_checksum

ROOT = Path(__file__).resolve().parents[1]

if "test_sync_length" not in available_rewards():

    @register_reward("test_sync_length")
    class Length:
        """Varies between random completions, so an untrained policy's steps change its weights."""

        def __call__(self, samples):
            return [float(len(s.completion) % 4) for s in samples]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    proc, url = start_server(tiny_model_dir, server_env())
    yield url
    stop_server(proc)


@pytest.fixture()
def policy(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def train_one_step(model, seed):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.randint(0, 300, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


def checksum_of(model):
    return weights_checksum(model.state_dict().items())


@pytest.mark.parametrize("transport", ["http", "gloo"])
@pytest.mark.parametrize("bucket_bytes, expect_buckets, seed", [(1 << 30, 1, 1), (1, 50, 2)])
def test_push_makes_server_weights_identical(served, policy, bucket_bytes, expect_buckets, seed, transport):
    model, tok = policy
    engine = ServerEngine([served], tok, weight_transport=transport, group_port=free_port())
    try:
        seed += 100 * (transport == "gloo")  # a fresh step: the module-wide server already holds the http case's
        train_one_step(model, seed=seed)
        assert engine.weights_checksums() != [checksum_of(model)]
        version = engine.weights_versions()[0]
        stats = engine.update_weights(iter_full_state(model), bucket_bytes=bucket_bytes)
        assert engine.weights_checksums() == [checksum_of(model)]
        assert engine.weights_versions() == [version + 1]
        # 51 state-dict entries, lm_head tied to the embeddings: 50 distinct tensors travel
        assert stats["buckets"] == expect_buckets
        assert stats["bytes"] == sum(p.numel() * p.element_size() for p in model.parameters())
        # the served model now generates what the trained copy generates
        prompt, params = [[5, 6, 7, 8]], SamplingParams(max_tokens=6, temperature=0)
        local = HFEngine(model, tok).generate(prompt, params)
        assert engine.generate(prompt, params)[0][0].token_ids == local[0][0].token_ids
        if transport == "gloo":  # a second update reuses the group
            train_one_step(model, seed=seed + 10)
            engine.update_weights(iter_full_state(model), bucket_bytes=bucket_bytes)
            assert engine.weights_checksums() == [checksum_of(model)]
            assert engine.weights_versions() == [version + 2]
    finally:
        engine.close()


def test_a_bucket_the_server_cannot_load_is_reported_with_its_reason(served, policy):
    _, tok = policy
    engine = ServerEngine([served], tok, weight_transport="gloo", group_port=free_port())
    try:
        with pytest.raises(ServerError, match="did not advance.*unknown weight 'no.such.weight'"):
            engine.update_weights([("no.such.weight", torch.zeros(3))])
        # refused before the broadcast, so the client never waits on a server that will not receive
        bad = {"tensors": [{"name": "lm_head.weight", "dtype": "float7", "shape": [1]}]}
        r = requests.post(f"{served}/update_bucket/", json=bad)
        assert r.status_code == 400 and "unknown dtype 'float7'" in r.json()["detail"]
    finally:
        engine.close()


def test_trl_style_per_tensor_update_over_gloo(served, policy):
    model, _ = policy
    train_one_step(model, seed=3)
    version = requests.get(f"{served}/weights_version/").json()["weights_version"]
    assert trl_style_push(served, iter_full_state(model), free_port()).status_code == 200
    assert requests.get(f"{served}/weights_version/").json()["weights_version"] == version + 1
    assert requests.get(f"{served}/weights_checksum/").json()["checksum"] == checksum_of(model)


def test_trl_style_update_with_a_failed_tensor_fails_and_keeps_the_version(served, policy):
    model, _ = policy
    version = requests.get(f"{served}/weights_version/").json()["weights_version"]
    named = [*iter_full_state(model)][:2] + [("no_such.weight", torch.zeros(3))]
    reset = trl_style_push(served, named, free_port())
    assert reset.status_code == 500
    assert "1 of 3 per-tensor updates failed" in reset.json()["detail"] and "no_such.weight" in reset.json()["detail"]
    assert requests.get(f"{served}/weights_version/").json()["weights_version"] == version
    # the next complete update goes through
    assert trl_style_push(served, iter_full_state(model), free_port()).status_code == 200
    assert requests.get(f"{served}/weights_version/").json()["weights_version"] == version + 1


class RecordingLogger(Logger):
    def __init__(self):
        self.logged = []

    name = "recording"
    version = 0

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class MustNotSync:
    tokenizer = None

    def update_weights(self, *args, **kwargs):
        raise AssertionError("the student must never be synced")


def test_callback_syncs_teacher_only_every_n_steps(served, policy):
    model, tok = policy
    logger = RecordingLogger()
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[WeightSync(every_n_steps=2, bucket_mb=0.05)],
                    loggers=[logger])
    wrapped = fabric.setup_module(model)
    teacher = ServerEngine([served], tok)
    engines = {"teacher": teacher, "student": MustNotSync()}
    train_one_step(model, seed=11)
    before = teacher.weights_versions()[0]

    fabric.call("on_train_batch_end", fabric=fabric, state={"model": wrapped, "step": 1}, engines=engines, batch=None)
    assert teacher.weights_versions() == [before] and logger.logged == []

    fabric.call("on_train_batch_end", fabric=fabric, state={"model": wrapped, "step": 2}, engines=engines, batch=None)
    assert teacher.weights_versions() == [before + 1]
    assert teacher.weights_checksums() == [checksum_of(model)]
    (step, metrics), = logger.logged
    assert step == 2 and set(metrics) == {"sync/seconds", "sync/bytes", "sync/buckets", "sync/push_wait",
                                          "sync/verify_max_abs_diff", "sync/verify_seconds"}
    assert metrics["sync/verify_max_abs_diff"] < 1e-4, "a float32 server scores the probe as the trainer does"
    assert metrics["sync/buckets"] > 1 and metrics["sync/bytes"] == sum(p.numel() * 4 for p in model.parameters())

    train_one_step(model, seed=12)
    metrics = {"reward": 0.5}  # the RL loop passes its metrics dict: stats go there instead of a separate log call
    fabric.call("on_train_batch_end", fabric=fabric, state={"model": wrapped, "step": 4}, engines=engines,
                metrics=metrics)
    assert {"reward", "sync/seconds", "sync/bytes", "sync/buckets"} <= set(metrics) and len(logger.logged) == 1
    assert teacher.weights_checksums() == [checksum_of(model)]

    in_process = {"teacher": HFEngine(model, tok), "student": MustNotSync()}
    metrics = {}
    fabric.call("on_train_batch_end", fabric=fabric, state={"model": wrapped, "step": 6}, engines=in_process,
                metrics=metrics)
    assert metrics == {} and len(logger.logged) == 1


def test_dead_server_error_names_it(tiny_model_dir, policy):
    model, tok = policy
    proc, url = start_server(tiny_model_dir, server_env())
    engine = ServerEngine([url], tok, timeout_s=10)
    engine.wait_until_healthy()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(ServerError, match=f"generation server {url} is unreachable"):
        engine.update_weights(iter_full_state(model), bucket_bytes=1 << 20)
    stop_server(proc)


def test_resumed_run_resyncs_the_servers_at_train_start(served, policy):
    model, tok = policy
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=[WeightSync()])
    wrapped = fabric.setup_module(model)
    teacher = ServerEngine([served], tok)
    engines = {"teacher": teacher, "student": MustNotSync()}
    before = teacher.weights_versions()[0]
    train_one_step(model, seed=20)  # the server holds other weights than the policy a fresh run starts from
    fabric.call("on_train_start", fabric=fabric, state={"model": wrapped, "step": 0}, engines=engines)
    assert teacher.weights_versions() == [before + 1], "a fresh run proves its servers hold the policy: it pushes"
    assert teacher.weights_checksums() == [checksum_of(model)]
    fabric.call("on_validation_start", fabric=fabric, state={"model": wrapped, "step": 0}, engines=engines)
    assert teacher.weights_versions() == [before + 1], "the servers already hold step 0's weights"
    train_one_step(model, seed=21)
    fabric.call("on_train_start", fabric=fabric, state={"model": wrapped, "step": 7}, engines=engines)
    assert teacher.weights_versions() == [before + 2]
    assert teacher.weights_checksums() == [checksum_of(model)]


def perturbed(model, scale=0.05):
    """The model's full state with one weight shifted: what a push behind the trainer's back would load."""
    named = [(n, t.clone()) for n, t in iter_full_state(model)]
    name, tensor = next((n, t) for n, t in named if n.endswith("q_proj.weight"))
    tensor.add_(scale)
    return named, name


def test_the_check_catches_a_server_whose_weights_were_altered_behind_the_trainers_back(served, policy):
    from callbacks.weight_sync import WeightSyncMismatch

    model, tok = policy
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped = fabric.setup_module(model)
    teacher = ServerEngine([served], tok)
    sync = WeightSync(verify_every_n_pushes=1)
    train_one_step(model, seed=30)
    stats = sync.push(fabric, {"model": wrapped, "step": 1}, teacher)
    assert stats["verify_max_abs_diff"] < 1e-4 and stats["bytes"] > 0 and stats["seconds"] > 0
    altered, name = perturbed(model)
    teacher.update_weights(altered)  # someone else's push: the trainer's weights did not change
    with pytest.raises(WeightSyncMismatch, match=r"on the servers and \[.*\] in the trainer \(largest difference"):
        sync.verify(fabric, wrapped, teacher)
    # the next push restores the trainer's weights, and the check passes again
    assert sync.push(fabric, {"model": wrapped, "step": 2}, teacher)["verify_max_abs_diff"] < 1e-4


def test_checks_run_every_n_pushes_and_catch_an_altered_local_worker(policy):
    from callbacks.weight_sync import WeightSyncMismatch
    from rcl.rl.async_rollouts import LocalWorker, VersionedEngine

    model, tok = policy
    import copy

    worker = VersionedEngine(LocalWorker(copy.deepcopy(model), tok), lambda: 0)
    fabric = Fabric(accelerator="cpu", devices=1)
    sync = WeightSync(verify_every_n_pushes=2)
    first = sync.push(fabric, {"model": model, "step": 1}, worker)
    assert "verify_max_abs_diff" not in first and worker.version == 1
    with torch.no_grad():
        worker.engine.model.model.layers[0].mlp.up_proj.weight.mul_(1.5)  # altered behind the trainer's back
    assert worker.engine.checksum() != checksum_of(model)
    train_one_step(model, seed=31)
    # the push itself rewrites every weight, so a push hides the alteration: check the worker without one
    second = sync.push(fabric, {"model": model, "step": 2}, worker)
    assert second["verify_max_abs_diff"] < 1e-4 and worker.version == 2
    with torch.no_grad():
        worker.engine.model.lm_head.weight.add_(0.1)
    with pytest.raises(WeightSyncMismatch, match="largest difference"):
        sync.verify(fabric, model, worker)


class FailingServer:
    tokenizer = None

    def update_weights(self, named, bucket_bytes):
        next(iter(named))
        raise ServerError("http://127.0.0.1:1: weights_version did not advance by one")


class OneProcessOfTwo:
    """Rank `rank` of a two-process run; `broadcast` hands every rank what rank 0 sent."""

    def __init__(self, rank, sent=None):
        self.global_rank, self.world_size, self.sent = rank, 2, sent

    def broadcast(self, obj, src=0):
        if self.global_rank == 0:
            self.sent = obj
        return self.sent


def test_a_failed_push_fails_every_rank_with_the_servers_error(policy, monkeypatch):
    import callbacks.weight_sync as weight_sync
    from callbacks.weight_sync import WeightSyncError

    model, _ = policy
    gathered = []
    monkeypatch.setattr(weight_sync, "iter_full_state", lambda m, f: (gathered.append(n) or (n, t)
                                                                       for n, t in m.state_dict().items()))
    rank0 = OneProcessOfTwo(0)
    with pytest.raises(WeightSyncError, match="weights_version did not advance"):
        WeightSync().sync(rank0, model, FailingServer())
    assert len(gathered) == len(model.state_dict()), "rank 0 finishes the gathers the other ranks are in"
    with pytest.raises(WeightSyncError, match="weights_version did not advance"):
        WeightSync().sync(OneProcessOfTwo(1, sent=rank0.sent), model, FailingServer())


def _rl_overrides(out_dir, url, *extra):
    return ["--teacher.model_name_or_path", "tiny-1m", "--trainer.out_dir", str(out_dir), "--trainer.loggers", "[csv]",
            "--trainer.max_steps", "2", "--grpo.prompts_per_step", "2", "--grpo.num_generations", "2",
            "--generation.max_completion_length", "6", "--eval.num_prompts", "2", "--eval.at_start", "false",
            "--data.init_args.synthetic_size", "100", "--data.init_args.val_size", "10",
            "--reward.functions", "{test_sync_length: 1.0}", "--reward.kwargs", "{}", "--optimizer.learning_rate", "0.01",
            *(["--engines.teacher.backend", "server", "--engines.teacher.urls", f"[{url}]"] if url else []), *extra]


def test_validate_against_a_server_evaluates_the_checkpoints_weights(tiny_model_dir, tmp_path):
    """`validate` used to generate with whatever the server held (version 0, the base weights) and print the result
    as the checkpoint's."""
    from rcl.rl.loop import cli_main

    direct = str(ROOT / "lightning_configs" / "quickstart_direct.yaml")
    trained = tmp_path / "trained"
    cli_main("fit", ["--config", direct, *_rl_overrides(trained, None)])
    ckpt = trained / "checkpoints" / "step-000002.ckpt"
    weights = torch.load(ckpt, weights_only=True)["model"]
    proc, url = start_server(tiny_model_dir, server_env())
    try:
        assert requests.get(f"{url}/weights_checksum/").json()["checksum"] != weights_checksum(weights.items())
        cli_main("validate", ["--config", direct, *_rl_overrides(tmp_path / "validate", url, "--ckpt_path", str(ckpt))])
        state = requests.get(f"{url}/weights_checksum/").json()
        assert state["weights_version"] == 1 and state["checksum"] == weights_checksum(weights.items())
    finally:
        stop_server(proc)


def test_a_fresh_run_refuses_a_server_that_serves_another_model(tmp_path):
    from callbacks.weight_sync import WeightSyncError
    from rcl.rl.loop import cli_main
    from rcl.tiny_models import resolve_model

    direct = str(ROOT / "lightning_configs" / "quickstart_direct.yaml")
    proc, url = start_server(resolve_model("tiny-10m"), server_env())
    try:
        with pytest.raises(WeightSyncError, match="shape mismatch"):
            cli_main("fit", ["--config", direct, *_rl_overrides(tmp_path / "mismatch", url)])
        assert requests.get(f"{url}/weights_version/").json()["weights_version"] == 0
    finally:
        stop_server(proc)


def test_every_process_pushes_to_its_own_local_worker(policy):
    """An in-process async worker lives in each training process: rank 1's copy must get rank 1's push (a push from
    rank 0 only would leave it sampling with the start weights forever)."""
    import copy

    from rcl.rl.async_rollouts import LocalWorker, VersionedEngine

    model, tok = policy
    worker = VersionedEngine(LocalWorker(copy.deepcopy(model), tok), lambda: 0)
    train_one_step(model, seed=40)
    assert worker.engine.checksum() != checksum_of(model)
    stats = WeightSync(verify_every_n_pushes=1).push(OneProcessOfTwo(1), {"model": model, "step": 1}, worker)
    assert worker.engine.checksum() == checksum_of(model) and stats["verify_max_abs_diff"] < 1e-4
