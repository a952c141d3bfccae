"""LoRA / QLoRA adapters (peft) for SFT and RL: recipe keys, seeded init, the reference model as the disabled adapter,
export as a merged model or as an adapter, and loading either back.

One recipe group, `lora:`, used by the SFT module and the RL loop alike. With `enabled: false` nothing here runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_PROJECTIONS = ATTENTION + ("gate_proj", "up_proj", "down_proj")
TARGET_SETS = {"attention": ATTENTION, "all": ALL_PROJECTIONS}
ADAPTER_CONFIG = "adapter_config.json"


class LoraConfigError(ValueError):
    """A LoRA setting that cannot work here; the message says what to change."""


@dataclass
class LoraArgs:
    """LoRA adapters (peft) on the trained model; QLoRA with a quantised base on GPUs."""

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""
    r: int = 16
    """Adapter rank."""
    alpha: float = 32.0
    """Scale numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    target_modules: Literal["attention", "all"] | list[str] = "attention"
    """attention: q/k/v/o_proj; all: the seven projections (q/k/v/o/gate/up/down_proj); or a list of module names."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full next to the adapters (e.g. [lm_head]); they are exported and synced too."""
    init_seed: int = 0
    """Seed of the adapters' initialisation (lora_A): the same seed gives bit-identical adapters."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """Load the base in 8 or 4 bits with bitsandbytes (QLoRA; CUDA only)."""
    export: Literal["merged", "adapter"] = "merged"
    """What the final export holds: the merged full model, or the adapter alone (with its base's path)."""
    sync: Literal["merged", "adapter"] = "merged"
    """What reaches teacher servers after each step: the merged weights (any server), or the adapter alone (servers
    started with `rcl serve --enable-lora`; vLLM serves it as a LoRA request, the hf engine merges it)."""


def target_modules(spec: str | list[str]) -> list[str]:
    if isinstance(spec, str):
        if spec not in TARGET_SETS:
            raise LoraConfigError(f"lora.target_modules {spec!r}: use attention, all, or a list of module names")
        return list(TARGET_SETS[spec])
    if not spec:
        raise LoraConfigError("lora.target_modules is an empty list")
    return list(spec)


def peft_config(args: LoraArgs):
    try:
        from peft import LoraConfig
    except ImportError:
        raise LoraConfigError("lora.enabled needs peft: pip install 'rcl[peft]'") from None

    return LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=target_modules(args.target_modules),
        modules_to_save=list(args.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def check_quantization(args: LoraArgs, accelerator: str) -> None:
    """bitsandbytes kernels are CUDA-only: refuse a quantised base on CPU before anything loads."""
    if args.quantization == "none":
        return
    if not args.enabled:
        raise LoraConfigError(f"lora.quantization={args.quantization} needs lora.enabled: a quantised base only "
                              "trains through adapters")
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise LoraConfigError(f"lora.quantization={args.quantization} (bitsandbytes) runs on CUDA GPUs only; on CPU "
                              "use lora.quantization: none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LoraConfigError("lora.quantization needs bitsandbytes: pip install 'rcl[qlora]'") from None


def quantization_kwargs(args: LoraArgs) -> dict[str, Any]:
    """`from_pretrained` keyword arguments of the quantised base (empty without quantisation)."""
    if args.quantization == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if args.quantization == "8bit":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=torch.bfloat16,
                                                      bnb_4bit_use_double_quant=True)}


def apply_lora(model: nn.Module, args: LoraArgs) -> nn.Module:
    """Wrap `model` in a peft LoRA model whose adapters are initialised from `args.init_seed` only (the global RNG is
    left as it was, so the rest of the run's randomness does not depend on whether LoRA is on)."""
    config = peft_config(args)  # first: says how to install peft when it is missing
    from peft import get_peft_model, prepare_model_for_kbit_training

    if args.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    devices = [model.device] if getattr(model, "device", None) is not None and model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(args.init_seed)
        return get_peft_model(model, config)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each tied tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def describe_trainable(model: nn.Module) -> str:
    trainable, total = parameter_counts(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%)"


def find_peft(module: Any) -> Any:
    """The peft model inside Fabric/DDP/DeepSpeed wrappers, or None."""
    from rcl.serving.weights import _find_peft, _unwrap

    return _find_peft(_unwrap(module))


class DisabledAdapter:
    """The policy with its adapters switched off, i.e. the frozen base: the reference model of the KL term, with no
    second copy of the weights. Not an nn.Module on purpose, so checkpoints do not hold the policy twice."""

    def __init__(self, policy: Any):
        self.policy = policy

    def __call__(self, **kwargs: Any) -> Any:
        peft = find_peft(self.policy)
        with torch.no_grad(), peft.disable_adapter():
            return peft(**kwargs)


def is_adapter_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def load_adapter_model(path: str | Path, base: nn.Module, trainable: bool) -> nn.Module:
    """`base` with the adapter saved at `path`: kept as a trainable peft model, or merged into plain weights."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(path), is_trainable=trainable)
    return model if trainable else model.merge_and_unload()


def adapter_scaling(config: dict) -> float:
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / (r ** 0.5) if config.get("use_rslora") else alpha / r


def merge_lora_state(state: dict[str, Tensor], scaling: float, adapter: str = "default") -> dict[str, Tensor]:
    """A peft model's full state dict -> the merged base model's state dict: W + scaling * B @ A per adapted linear,
    a modules_to_save copy in place of its original, base names (`base_model.model.` and `.base_layer.` dropped).

    Pure tensor maths on gathered weights, so it also serves sharded strategies whose state dict is already full.
    """
    from rcl.serving.weights import peft_base_name

    merged: dict[str, Tensor] = {}
    for name, t in state.items():
        base = peft_base_name(name)
        if base is None:
            continue
        if name.endswith(".base_layer.weight"):
            prefix = name[: -len("base_layer.weight")]
            a, b = state.get(f"{prefix}lora_A.{adapter}.weight"), state.get(f"{prefix}lora_B.{adapter}.weight")
            if a is not None and b is not None:
                t = (t.float() + scaling * (b.float() @ a.float())).to(t.dtype)
        merged[base] = t
    return merged


def adapter_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapter's own tensors (lora_A/B and modules_to_save copies) of a peft model's state dict."""
    return {k: v for k, v in state.items() if "lora_" in k or ".modules_to_save." in k}


def export_model(model: nn.Module, tokenizer: Any, out: str | Path, mode: str, state: dict[str, Tensor] | None = None
                 ) -> Path:
    """Save a peft model as a merged HF folder or as an adapter folder (adapter_config.json names its base), with the
    tokenizer. `state`: the full peft state dict when the caller gathered it (merged export under sharded strategies);
    the adapter export reads the live (unsharded) model."""
    peft = find_peft(model)
    out = Path(out)
    if mode == "adapter":
        peft.save_pretrained(str(out))
    elif mode == "merged":
        full = state if state is not None else {k: v.detach().cpu() for k, v in peft.state_dict().items()}
        merged = merge_lora_state(full, adapter_scaling(peft.peft_config["default"].to_dict()))
        base = peft.get_base_model()
        head, embed = merged.get("lm_head.weight"), merged.get("model.embed_tokens.weight")
        if head is not None and embed is not None and not torch.equal(head, embed):
            base.config.tie_word_embeddings = False  # a head trained in full (modules_to_save) no longer ties
        base.save_pretrained(str(out), state_dict=merged)
    else:
        raise LoraConfigError(f"lora.export {mode!r}: use merged or adapter")
    tokenizer.save_pretrained(str(out))
    return out


def load_for_training(path: str, lora: LoraArgs, **kwargs: Any) -> nn.Module:
    """The model to train from `path` (a resolved HF folder): a saved adapter folder continues as that adapter when
    LoRA is on (its r/alpha/targets are the saved ones) and is merged into plain weights otherwise; an ordinary model
    gets fresh adapters when LoRA is on."""
    from transformers import AutoModelForCausalLM

    kwargs = {**kwargs, **quantization_kwargs(lora)}
    if is_adapter_folder(path):
        base = AutoModelForCausalLM.from_pretrained(adapter_base(path), **kwargs)
        return load_adapter_model(path, base, trainable=lora.enabled)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return apply_lora(model, lora) if lora.enabled else model
