"""Adapter-only weight sync: the trainer sends its LoRA adapter (a few MB) instead of the merged model.

Wire format: one safetensors body holding the adapter tensors under peft's saved names
(`base_model.model.<module>.lora_A.weight`, ...; `modules_to_save` copies under the module's own name) and the LoRA
config as JSON in the safetensors metadata. `POST /load_adapter/?version=N` on an `rcl serve --enable-lora` server
loads it as the adapter version N: vLLM serves it as a LoRA request, the hf engine merges it into a pristine copy of
its base weights (the CPU mirror of what vLLM computes).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from rcl.lora import adapter_scaling, find_peft

CONFIG_KEY = "lora_config"


def encode_adapter(model: Any) -> bytes:
    """The trainer's adapter (its live values) as safetensors bytes with the LoRA config in the metadata."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save

    peft = find_peft(model)
    if peft is None:
        raise ValueError("adapter-only sync needs a LoRA policy (lora.enabled: true)")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(peft).items()}
    config = peft.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    return save(tensors, metadata={CONFIG_KEY: json.dumps(config, default=str)})


def decode_adapter(data: bytes) -> tuple[dict[str, Tensor], dict]:
    from safetensors.torch import load

    tensors = load(data)
    header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 header size, then the JSON header
    metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    if CONFIG_KEY not in metadata:
        raise ValueError(f"the adapter body has no {CONFIG_KEY!r} metadata")
    return tensors, json.loads(metadata[CONFIG_KEY])


def served_name(key: str) -> str | None:
    """The served model's parameter an adapter tensor changes (None for lora_B, which goes with its lora_A)."""
    name = key.removeprefix("base_model.model.")
    if ".lora_B." in name:
        return None
    return name.split(".lora_A.")[0] + ".weight" if ".lora_A." in name else name


def merged_targets(base: dict[str, Tensor], adapter: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """The served model's tensors that the adapter changes, merged: W + scaling * B @ A for each adapted linear, the
    adapter's copy for each modules_to_save entry. `base` maps served names to the pristine base tensors."""
    scaling = adapter_scaling(config)
    out: dict[str, Tensor] = {}
    for name, t in adapter.items():
        key = served_name(name)
        if key is None:
            continue
        if key not in base:
            raise ValueError(f"adapter tensor {name!r} matches no served parameter")
        if ".lora_A." in name:
            b, w = adapter[name.replace(".lora_A.", ".lora_B.")], base[key]
            out[key] = (w.float() + scaling * (b.float() @ t.float())).to(w.dtype)
        else:  # a module trained in full
            out[key] = t
    return out


class MergingAdapterHost:
    """The hf engine's adapter support: keeps the base values of every tensor an adapter touched, and loads each new
    version merged into those (never into an earlier merge)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.base: dict[str, Tensor] = {}
        self.version = 0

    @torch.no_grad()
    def load(self, adapter: dict[str, Tensor], config: dict, version: int) -> int:
        live = dict(self.model.named_parameters(remove_duplicate=False))
        names_of: dict[int, list[str]] = {}
        for name, p in live.items():
            names_of.setdefault(p.data_ptr(), []).append(name)
        for name in filter(None, map(served_name, adapter)):
            if name not in live:
                raise ValueError(f"adapter targets {name!r}, which the served model does not have")
            if len(names_of[live[name].data_ptr()]) > 1:
                raise ValueError(f"adapter targets {name!r}, which the served model ties to "
                                 f"{names_of[live[name].data_ptr()]}: the trainer's copy is untied, so the server "
                                 "cannot mirror it; sync merged weights instead")
            self.base.setdefault(name, live[name].detach().clone())
        merged = merged_targets(self.base, adapter, config)
        for name, t in merged.items():
            live[name].copy_(t.to(device=live[name].device, dtype=live[name].dtype))
        self.version = version
        return len(merged)


def push_adapter(engine: Any, model: Any, version: int) -> dict:
    """Send the policy's adapter to every server of a `ServerEngine` pool as adapter `version`; returns sync stats."""
    import time

    start = time.perf_counter()
    body = encode_adapter(model)
    headers = {"Content-Type": "application/octet-stream"}
    engine._on_all(lambda url: engine._request(url, "POST", "/load_adapter/", params={"version": version},
                                                data=body, headers=headers))
    return {"seconds": time.perf_counter() - start, "bytes": len(body), "buckets": 1}
