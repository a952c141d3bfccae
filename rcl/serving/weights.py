"""Full weights out of a (possibly sharded, wrapped or LoRA) training model, packed into buckets for a server.

Gathering is a collective under DeepSpeed ZeRO-3 and FSDP: every rank must iterate `iter_full_state` to the end, in
step with rank 0, which is the only rank that receives tensors. Names come out as the inner Hugging Face model names
(wrapper prefixes stripped, LoRA merged into base names), which is what inference engines load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

NamedTensor = tuple[str, Tensor]

# Dotted path components that wrappers insert and inference engines do not know.
WRAPPER_COMPONENTS = frozenset(
    {"_forward_module", "_original_module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"}
)


def clean_name(name: str) -> str:
    """`module._orig_mod.model.layers.0._fsdp_wrapped_module.mlp.weight` -> `model.layers.0.mlp.weight`."""
    parts = [p for p in name.split(".") if p not in WRAPPER_COMPONENTS]
    if parts and parts[0] == "module":  # DDP / DeepSpeed engine attribute; only ever the first component
        parts = parts[1:]
    return ".".join(parts)


def peft_base_name(name: str) -> str | None:
    """Map a merged PEFT state-dict key to the base model's key; None for adapter-only entries."""
    if "lora_" in name or ".original_module." in name or ("modules_to_save." in name and ".default." not in name):
        return None
    name = name.removeprefix("base_model.model.")
    name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    return name


def _unwrap(module: nn.Module) -> nn.Module:
    """Strip Fabric, DDP, DeepSpeed and torch.compile wrappers (not FSDP, whose wrapper does the gathering)."""
    while True:
        inner = _first_attr(module, "_forward_module", "_orig_mod")
        if inner is None and type(module).__name__ in ("DistributedDataParallel", "DeepSpeedEngine"):
            inner = module.module
        if inner is None:
            return module
        module = inner


def _first_attr(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:  # not `or`: an empty ModuleList is falsy
            return value
    return None


def _find_peft(module: nn.Module) -> nn.Module | None:
    m = module
    for _ in range(4):
        if hasattr(m, "peft_config") and hasattr(m, "merge_adapter"):
            return m
        m = _first_attr(m, "module", "_fsdp_wrapped_module")
        if m is None:
            return None
    return None


def _global_rank(fabric_or_strategy: Any) -> int:
    rank = getattr(fabric_or_strategy, "global_rank", None)
    if rank is not None:
        return int(rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _is_zero3(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _is_fsdp1(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules())


def _to_cpu(t: Tensor) -> Tensor:
    full = getattr(t, "full_tensor", None)  # FSDP2 DTensor: an all-gather every rank must join
    if full is not None:
        t = full()
    return t.detach().to("cpu")


def _state_items(module: nn.Module, rank0: bool) -> Iterator[NamedTensor]:
    """Single device, DDP and FSDP2: the state dict, DTensors gathered with `full_tensor()`."""
    seen: set[int] = set()
    for name, t in module.state_dict(keep_vars=True).items():
        if id(t) in seen:  # tied weights: FSDP2 gathers each name into a new tensor, so dedupe before gathering
            continue
        seen.add(id(t))
        t = _to_cpu(t)
        if rank0:
            yield name, t


def _merged_items(module: nn.Module, rank0: bool, peft: nn.Module | None) -> Iterator[NamedTensor]:
    """Full (gathered) parameters and persistent buffers, with any LoRA merged; copies, taken on rank 0."""
    with _merged(peft):
        for name, t in [*module.named_parameters(), *_persistent_buffers(module)]:
            t = _to_cpu(t)
            if rank0:
                yield name, t.clone()


def _zero3_items(module: nn.Module, rank0: bool, peft: nn.Module | None) -> Iterator[NamedTensor]:
    import deepspeed

    params = list(module.named_parameters())
    if peft is not None:  # merging LoRA needs every base weight and adapter gathered at once
        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            yield from _merged_items(module, rank0, peft)
        return
    buffers = list(_persistent_buffers(module))
    for name, p in params:
        with deepspeed.zero.GatheredParameters([p]):
            if rank0:
                yield name, p.data.detach().to("cpu").clone()
    if rank0:
        yield from ((n, b.detach().to("cpu")) for n, b in buffers)


def _fsdp1_items(root: nn.Module, rank0: bool, peft: nn.Module | None) -> Iterator[NamedTensor]:
    """Post-order over FSDP units, each unsharded alone (`recurse=False`), so one unit is full at a time.

    With LoRA, the whole model is unsharded at once (merging needs the base weights and adapters together).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if peft is not None:
        with FSDP.summon_full_params(root, writeback=False):
            yield from _merged_items(root, rank0, peft)
        return
    seen: set[str] = set()
    for outer in _outermost(root, FSDP):
        # Before the first forward FSDP is not initialised, and summoning an inner unit first would make that unit the
        # root (and the real root then fails its own lazy init). One summon at the real root initialises all of them.
        if getattr(outer, "_is_root", None) is None:
            with FSDP.summon_full_params(outer, recurse=False, writeback=False):
                pass

    def visit(prefix: str, mod: nn.Module) -> Iterator[NamedTensor]:
        for child_name, child in mod.named_children():
            yield from visit(f"{prefix}{child_name}.", child)
        if not isinstance(mod, FSDP):
            return
        with FSDP.summon_full_params(mod, recurse=False, writeback=False):
            for pname, p in mod.named_parameters():
                full = clean_name(prefix + pname)
                if full in seen or full.endswith("_flat_param"):  # a nested unit's flat shard, yielded by that unit
                    continue
                seen.add(full)
                if rank0:
                    yield full, p.detach().to("cpu").clone()

    yield from visit("", root)
    if rank0:
        for name, b in _persistent_buffers(root):
            if clean_name(name) not in seen:
                yield clean_name(name), b.detach().to("cpu")


def _persistent_buffers(module: nn.Module) -> Iterator[NamedTensor]:
    """The buffers a state dict holds (not e.g. rotary `inv_freq`, which engines recompute and do not load)."""
    for prefix, mod in module.named_modules():
        for name, b in mod._buffers.items():
            if b is not None and name not in mod._non_persistent_buffers_set:
                yield (f"{prefix}.{name}" if prefix else name), b


def _outermost(module: nn.Module, kind: type) -> Iterator[nn.Module]:
    if isinstance(module, kind):
        yield module
        return
    for child in module.children():
        yield from _outermost(child, kind)


@contextlib.contextmanager
def _merged(peft_model: nn.Module | None):
    if peft_model is None:
        yield
        return
    peft_model.merge_adapter()
    try:
        yield
    finally:
        peft_model.unmerge_adapter()


def iter_full_state(module: nn.Module, fabric_or_strategy: Any = None, all_ranks: bool = False) -> Iterator[NamedTensor]:
    """Yield `(name, full cpu tensor)` for every weight; every rank must drain it, only rank 0 gets items (every rank
    with `all_ranks`: each gather already brings the full tensor to every rank).

    Works under a single device, DDP, DeepSpeed ZeRO-3, FSDP1 and FSDP2 (Fabric-wrapped or not). A PEFT model is merged
    while iterating and unmerged afterwards; its base-model names are yielded. A tied parameter (shared embeddings) is
    yielded once, under its first name. On a single CPU device the yielded tensors alias the live
    parameters: copy them before the model changes.
    """
    rank0 = all_ranks or _global_rank(fabric_or_strategy) == 0
    inner = _unwrap(module)
    peft = _find_peft(inner)
    if _is_zero3(inner):
        items = _zero3_items(inner, rank0, peft)
    elif _is_fsdp1(inner):
        items = _fsdp1_items(inner, rank0, peft)
    elif peft is not None:
        items = _merged_items(inner, rank0, peft)
    else:
        items = _state_items(inner, rank0)
    for name, tensor in items:  # each source yields a tied weight once, by parameter identity
        name = clean_name(name)
        if peft is not None:
            name = peft_base_name(name)
            if name is None:
                continue
        yield name, tensor


def bucketize(named: Iterable[NamedTensor], bucket_bytes: int) -> Iterator[list[NamedTensor]]:
    """Pack tensors in order into lists of at most `bucket_bytes` (a larger tensor travels alone)."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    bucket: list[NamedTensor] = []
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def weights_checksum(named: Iterable[NamedTensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) in name order; equal iff every named tensor is bit-identical."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda item: item[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encode_bucket(named: Iterable[NamedTensor]) -> bytes:
    """One bucket as safetensors bytes (tensors made contiguous; storage shared inside the bucket is copied)."""
    from safetensors.torch import save

    out: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return save(out)


def decode_bucket(data: bytes) -> list[NamedTensor]:
    from safetensors.torch import load

    return list(load(data).items())
