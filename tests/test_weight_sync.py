"""Weight sync end to end on CPU: train a copy one step, push it; the server's weights equal the trainer's exactly."""

import signal

import pytest
import requests
import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import Logger
from serving_support import free_port, server_env, start_server, stop_server, trl_style_push

from callbacks.weight_sync import WeightSync
from rcl.engines import HFEngine, SamplingParams
from rcl.serving.client import ServerEngine, ServerError
from rcl.serving.weights import iter_full_state, weights_checksum


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
    assert step == 2 and set(metrics) == {"sync/seconds", "sync/bytes", "sync/buckets"}
    assert metrics["sync/buckets"] > 1 and metrics["sync/bytes"] == sum(p.numel() * 4 for p in model.parameters())

    train_one_step(model, seed=12)
    metrics = {"reward": 0.5}  # the RL loop passes its metrics dict: stats go there instead of a separate log call
    fabric.call("on_train_batch_end", fabric=fabric, state={"model": wrapped, "step": 4}, engines=engines,
                metrics=metrics)
    assert set(metrics) == {"reward", "sync/seconds", "sync/bytes", "sync/buckets"} and len(logger.logged) == 1
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
    fabric.call("on_train_start", fabric=fabric, state={"model": wrapped, "step": 0}, engines=engines)
    assert teacher.weights_versions() == [before], "a fresh run's servers already hold the starting weights"
    train_one_step(model, seed=21)
    fabric.call("on_train_start", fabric=fabric, state={"model": wrapped, "step": 7}, engines=engines)
    assert teacher.weights_versions() == [before + 1]
    assert teacher.weights_checksums() == [checksum_of(model)]
