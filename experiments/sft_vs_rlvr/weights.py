"""Weight differences from the base: per tensor, the relative Frobenius change ||W_arm - W_base|| / ||W_base||,
grouped by module kind. Pure functions over state dicts; `load_state` reads an exported HF folder."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

Group = Literal["attention", "mlp", "embeddings", "norms", "other"]
GROUPS: tuple[Group, ...] = ("attention", "mlp", "embeddings", "norms", "other")

_PATTERNS: tuple[tuple[Group, tuple[str, ...]], ...] = (
    ("norms", ("norm", "ln_", ".ln", "layernorm")),
    ("embeddings", ("embed", "wte", "wpe", "lm_head")),
    ("attention", ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj")),
    ("mlp", ("mlp", "gate_proj", "up_proj", "down_proj", "fc1", "fc2", "ffn")),
)


def module_group(name: str) -> Group:
    """The kind of a parameter from its name (norms first: `input_layernorm` sits beside attention weights)."""
    lowered = name.lower()
    for group, needles in _PATTERNS:
        if any(n in lowered for n in needles):
            return group
    return "other"


def relative_changes(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]) -> list[dict]:
    """One row per tensor both state dicts hold with the same shape: `name`, `group`, `relative_change`
    (||ΔW||_F / ||W_base||_F; inf when the base tensor is zero and the tuned one is not), `delta_norm`, `base_norm`,
    `numel`; sorted by relative change, largest first."""
    rows = []
    for name, w in base.items():
        other = tuned.get(name)
        if other is None or other.shape != w.shape:
            continue
        w64, o64 = w.detach().double(), other.detach().double()
        delta, norm = torch.linalg.vector_norm(o64 - w64).item(), torch.linalg.vector_norm(w64).item()
        rel = delta / norm if norm > 0 else (0.0 if delta == 0 else math.inf)
        rows.append({"name": name, "group": module_group(name), "relative_change": rel, "delta_norm": delta,
                     "base_norm": norm, "numel": w.numel()})
    return sorted(rows, key=lambda r: r["relative_change"], reverse=True)


def group_summary(rows: list[dict]) -> dict[str, dict]:
    """Per group: tensors, the mean and the largest relative change, and the group's pooled change
    sqrt(sum ||ΔW||^2) / sqrt(sum ||W||^2)."""
    out = {}
    for group in GROUPS:
        mine = [r for r in rows if r["group"] == group]
        if not mine:
            continue
        base = math.sqrt(sum(r["base_norm"] ** 2 for r in mine))
        delta = math.sqrt(sum(r["delta_norm"] ** 2 for r in mine))
        out[group] = {"tensors": len(mine), "mean": sum(r["relative_change"] for r in mine) / len(mine),
                      "max": max(r["relative_change"] for r in mine), "pooled": delta / base if base else math.nan}
    return out


def load_state(model: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a model: an exported HF folder (safetensors shards, or a PyTorch bin), a tiny preset, or a hub
    id (its safetensors are fetched into the HF cache)."""
    from safetensors.torch import load_file

    from rcl.tiny_models import resolve_model

    folder = Path(resolve_model(str(model)))
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(model), allow_patterns=["*.safetensors", "*.json"]))
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(path)))
    if not state:
        for path in sorted(folder.glob("pytorch_model*.bin")):
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    if not state:
        raise FileNotFoundError(f"no safetensors or pytorch_model*.bin weights in {folder}")
    return state
