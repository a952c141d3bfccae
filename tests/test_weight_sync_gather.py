"""`iter_full_state`, `bucketize` and name cleaning: wrappers, tied weights, ranks, DDP and FSDP on CPU (gloo)."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from rcl.serving.weights import (
    bucketize,
    clean_name,
    decode_bucket,
    encode_bucket,
    iter_full_state,
    peft_base_name,
    weights_checksum,
)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(1))


def test_clean_name():
    assert clean_name("module._orig_mod.model.layers.0.mlp.weight") == "model.layers.0.mlp.weight"
    assert clean_name("_forward_module.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.q.weight") == (
        "model.layers.0.q.weight"
    )
    assert clean_name("model.module_list.0.weight") == "model.module_list.0.weight"


def test_peft_base_name():
    assert peft_base_name("base_model.model.model.layers.0.q_proj.base_layer.weight") == "model.layers.0.q_proj.weight"
    assert peft_base_name("base_model.model.model.layers.0.q_proj.lora_A.default.weight") is None
    assert peft_base_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
    assert peft_base_name("base_model.model.lm_head.original_module.weight") is None


def test_bucketize_packs_in_order():
    named = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([2, 2, 5, 1, 1])]  # float32: 8, 8, 20, 4, 4 bytes
    buckets = list(bucketize(named, bucket_bytes=16))
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3", "t4"]]
    with pytest.raises(ValueError):
        list(bucketize(named, 0))


def test_bucket_roundtrip_is_exact():
    named = [("a", torch.randn(3, 4)), ("b", torch.randn(4, 3).t()), ("c", torch.arange(5).to(torch.bfloat16))]
    back = dict(decode_bucket(encode_bucket(named)))
    assert all(torch.equal(back[n], t) and back[n].dtype == t.dtype for n, t in named)


def test_tied_weights_sent_once_and_wrappers_stripped():
    model = Tied()
    compiled = torch.compile(model)  # lazy: nothing is compiled until called
    names = [n for n, _ in iter_full_state(compiled)]
    assert names == ["scale", "embed.weight", "block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"]
    assert weights_checksum(iter_full_state(model)) != weights_checksum(model.state_dict().items())  # head missing


def test_non_zero_rank_gets_nothing():
    class Rank1:
        global_rank = 1

    assert list(iter_full_state(Tied(), Rank1())) == []


def test_checksum_detects_any_change():
    model = Tied()
    before = weights_checksum(model.state_dict().items())
    with torch.no_grad():
        model.block[1].bias[2] += 1e-7
    assert weights_checksum(model.state_dict().items()) != before


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for mode in ("ddp", "fsdp2"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
            reference = {k: v.clone() for k, v in model.state_dict().items()}
            if mode == "ddp":
                wrapped = nn.parallel.DistributedDataParallel(model)
            else:
                from torch.distributed.device_mesh import init_device_mesh
                from torch.distributed.fsdp import fully_shard

                mesh = init_device_mesh("cpu", (world,))
                for layer in (model[0], model[2]):
                    fully_shard(layer, mesh=mesh)
                wrapped = fully_shard(model, mesh=mesh)
            got = dict(iter_full_state(wrapped))
            torch.save({"got": got, "reference": reference}, os.path.join(out_dir, f"{mode}-{rank}.pt"))
        # CI once saw rank 0 abort ("terminate called without an active exception") when it tore gloo down while
        # rank 1 still had work in flight: meet before destroying the group.
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_and_fsdp2_gather_on_cpu(tmp_path):
    from serving_support import free_port

    mp.spawn(_gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for mode in ("ddp", "fsdp2"):
        rank0 = torch.load(tmp_path / f"{mode}-0.pt")
        rank1 = torch.load(tmp_path / f"{mode}-1.pt")
        assert rank1["got"] == {}, mode
        assert list(rank0["got"]) == list(rank0["reference"]), mode  # "module." / FSDP prefixes stripped
        assert all(torch.equal(rank0["got"][k], v) for k, v in rank0["reference"].items()), mode
