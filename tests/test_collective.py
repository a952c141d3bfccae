"""Flat bucket packing for the weight group, and a gloo group between two processes of this machine."""

import importlib.util
import threading

import pytest
import torch
from serving_support import free_port

from rcl.serving.client import ServerEngine, _with_last
from rcl.serving.collective import GlooGroup, open_group, pack_bucket, unpack_bucket


def test_pack_unpack_roundtrip_is_exact_for_every_layout():
    named = [
        ("a", torch.randn(3, 4)),
        ("b", torch.randn(4, 3).t()),  # not contiguous
        ("c", torch.arange(5).to(torch.bfloat16)),
        ("d", torch.tensor(7, dtype=torch.int64)),  # a scalar
        ("e", torch.ones(2, 0)),  # empty
    ]
    flat, metas = pack_bucket(named)
    assert flat.dtype == torch.uint8 and flat.numel() == 48 + 48 + 16 + 16  # each tensor padded to 16 bytes
    assert [m["dtype"] for m in metas] == ["float32", "float32", "bfloat16", "int64", "float32"]
    back = unpack_bucket(flat, metas)
    assert [n for n, _ in back] == list("abcde")
    for (_, want), (_, got) in zip(named, back):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_unpack_refuses_metadata_that_does_not_match_the_buffer():
    flat, metas = pack_bucket([("a", torch.zeros(4))])
    with pytest.raises(ValueError, match="describes 32 bytes but the buffer has 16"):
        unpack_bucket(flat, [{"name": "a", "dtype": "float32", "shape": [8]}])
    with pytest.raises(ValueError, match="unknown dtype 'float7'"):
        unpack_bucket(flat, [{"name": "a", "dtype": "float7", "shape": [4]}])
    with pytest.raises(ValueError, match="no tensors"):
        pack_bucket([])


def test_with_last_marks_only_the_final_item():
    assert list(_with_last("xyz")) == [(0, "x", False), (1, "y", False), (2, "z", True)]
    assert list(_with_last(["only"])) == [(0, "only", True)]
    assert list(_with_last([])) == []


def test_gloo_group_broadcasts_from_the_last_rank():
    port, received = free_port(), {}

    def server() -> None:
        group = GlooGroup("127.0.0.1", port, rank=0, world_size=2)
        buffer = torch.zeros(6, dtype=torch.uint8)
        group.broadcast(buffer, src=1)
        received["server"] = buffer.tolist()
        group.close()

    thread = threading.Thread(target=server)
    thread.start()
    client = GlooGroup("127.0.0.1", port, rank=1, world_size=2)
    client.broadcast(torch.arange(6, dtype=torch.uint8), src=1)
    client.close()
    thread.join(timeout=60)
    assert received["server"] == [0, 1, 2, 3, 4, 5]


def test_gloo_group_listens_on_the_requested_host_only():
    """The store's port (and gloo's pair sockets) must not be reachable from other interfaces while a group is open:
    a TCPStore master asked for 127.0.0.1 listened on every address."""
    import psutil

    port, opened, done = free_port(), threading.Event(), threading.Event()

    def server() -> None:
        group = GlooGroup("127.0.0.1", port, rank=0, world_size=2)
        opened.set()
        group.broadcast(torch.zeros(1), src=1)
        done.wait(timeout=60)
        group.close()

    thread = threading.Thread(target=server)
    thread.start()
    client = GlooGroup("127.0.0.1", port, rank=1, world_size=2)
    assert opened.wait(timeout=60)
    client.broadcast(torch.ones(1), src=1)
    listening = [c.laddr for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    done.set()
    client.close()
    thread.join(timeout=60)
    store = [addr for addr in listening if addr.port == port]
    assert len(store) == 1 and store[0].ip == "127.0.0.1", listening
    assert all(addr.ip == "127.0.0.1" for addr in listening), f"a socket listens beyond loopback: {listening}"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_nccl_group_without_vllm_names_the_extra_and_the_alternative():
    with pytest.raises(ImportError, match=r"pip install 'rcl\[vllm\]'.*http transport"):
        open_group("nccl", "127.0.0.1", free_port(), rank=1, world_size=2)


def test_unknown_group_kind_and_transport_are_refused():
    with pytest.raises(ValueError, match="unknown group kind 'mpi'"):
        open_group("mpi", "127.0.0.1", 1, rank=0, world_size=2)
    with pytest.raises(ValueError, match="weight_transport must be http, gloo or nccl"):
        ServerEngine(["http://127.0.0.1:1"], tokenizer=None, weight_transport="tcp")
