"""`iter_full_state`, `bucketize` and name cleaning: wrappers, tied weights, ranks, DDP and FSDP on CPU (gloo)."""

import importlib.util
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


def _wrap(model: nn.Module, mode: str, world: int) -> nn.Module:
    """`model` under `mode`, sharded per decoder layer as the recipes do."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    layer_cls = type(layers[0])
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if mode.startswith("fsdp1"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FSDP(model, auto_wrap_policy=ModuleWrapPolicy({layer_cls}), device_id=torch.device("cpu"),
                    use_orig_params=mode == "fsdp1_orig_params")
    if mode.startswith("fsdp2"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    raise ValueError(mode)


def _save_gather(wrapped: nn.Module, reference: dict, out_dir: str, tag: str, rank: int) -> None:
    got = dict(iter_full_state(wrapped))
    everywhere = dict(iter_full_state(wrapped, all_ranks=True))  # what reference-model sync needs on every rank
    torch.save({"got": got, "everywhere": everywhere, "reference": reference}, os.path.join(out_dir, f"{tag}-{rank}.pt"))


def _init_gloo(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)


def _torch_worker(rank: int, world: int, port: int, model_dir: str, out_dir: str, modes: list[str]) -> None:
    from transformers import AutoModelForCausalLM

    _init_gloo(rank, world, port)
    try:
        for mode in modes:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(model_dir)
            if mode.endswith("_lora"):
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, _lora_config(LoraConfig))
            reference = {n: t.clone() for n, t in iter_full_state(model)}
            # gathered before any forward pass: FSDP is not initialised yet, as at a sync before the first step
            _save_gather(_wrap(model, mode.removesuffix("_lora"), world), reference, out_dir, mode, rank)
        # CI once saw rank 0 abort ("terminate called without an active exception") when it tore gloo down while
        # rank 1 still had work in flight: meet before destroying the group.
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _zero3_worker(rank: int, world: int, port: int, model_dir: str, out_dir: str, modes: list[str]) -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    from deepspeed_support import skip_the_shared_memory_comm_build
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    skip_the_shared_memory_comm_build()

    _init_gloo(rank, world, port)
    try:
        for mode in modes:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(model_dir)
            if mode == "zero3_lora":
                model = get_peft_model(model, _lora_config(LoraConfig))
            reference = {n: t.clone() for n, t in iter_full_state(model)}
            config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                      "zero_allow_untested_optimizer": True}
            engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                              config=config)
            assert all(p.ds_tensor.numel() < p.ds_numel for p in engine.module.parameters() if p.ds_numel > 1)
            _save_gather(engine, reference, out_dir, mode, rank)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _lora_config(config_cls):
    # init_lora_weights=False: non-zero B, so merging really changes the base weights
    return config_cls(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def _check_gathered(out_dir, modes: list[str]) -> None:
    for mode in modes:
        rank0 = torch.load(os.path.join(out_dir, f"{mode}-0.pt"))
        rank1 = torch.load(os.path.join(out_dir, f"{mode}-1.pt"))
        assert rank1["got"] == {}, mode
        assert sorted(rank0["got"]) == sorted(rank0["reference"]), mode  # wrapper prefixes stripped, tied once
        assert all(torch.equal(rank0["got"][k], v) for k, v in rank0["reference"].items()), mode
        for rank in (rank0, rank1):
            assert sorted(rank["everywhere"]) == sorted(rank0["reference"]), mode
            assert all(torch.equal(rank["everywhere"][k], v) for k, v in rank0["reference"].items()), mode


def test_ddp_fsdp1_and_fsdp2_gather_the_single_device_weights_on_cpu(tmp_path, tiny_model_dir):
    from serving_support import free_port

    modes = ["ddp", "fsdp1", "fsdp1_orig_params", "fsdp2"]
    if importlib.util.find_spec("peft") is not None:
        modes += ["ddp_lora", "fsdp1_orig_params_lora", "fsdp2_lora"]  # FSDP1 + LoRA needs use_orig_params
    mp.spawn(_torch_worker, args=(2, free_port(), tiny_model_dir, str(tmp_path), modes), nprocs=2, join=True)
    _check_gathered(tmp_path, modes)


def test_zero3_gathers_full_and_lora_merged_weights_on_cpu(tmp_path, tiny_model_dir):
    pytest.importorskip("deepspeed")
    pytest.importorskip("peft")
    from serving_support import free_port

    modes = ["zero3", "zero3_lora"]
    mp.spawn(_zero3_worker, args=(2, free_port(), tiny_model_dir, str(tmp_path), modes), nprocs=2, join=True)
    _check_gathered(tmp_path, modes)


def test_lora_is_merged_under_base_names_and_unmerged_after(tiny_model_dir):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_names = [n for n, _ in iter_full_state(base)]
    model = peft.get_peft_model(base, _lora_config(peft.LoraConfig))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    got = {n: t.clone() for n, t in iter_full_state(model)}

    assert list(got) == base_names
    q = "model.layers.0.self_attn.q_proj.weight"
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    assert delta.abs().max() > 0
    torch.testing.assert_close(got[q], before[f"base_model.model.{q.removesuffix('.weight')}.base_layer.weight"] + delta)
    k = "model.layers.0.self_attn.k_proj.weight"  # not a LoRA target: unchanged
    assert torch.equal(got[k], before[f"base_model.model.{k}"])
    for n, t in model.state_dict().items():  # unmerged afterwards (W + d - d: equal up to rounding)
        torch.testing.assert_close(t, before[n])
    assert not any(layer.merged_adapters for layer in model.modules() if hasattr(layer, "merged_adapters"))
