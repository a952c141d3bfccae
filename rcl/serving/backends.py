"""What a generation server runs: one small interface over the in-process HF engine and vLLM.

A backend generates from token ids and loads named weights into the model it serves. `HFBackend` is the CPU/test
path (and a fallback on GPUs without vLLM); `rcl.serving.vllm_engine.VLLMBackend` is the fast GPU path.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Protocol, Sequence

import torch

from rcl.engines import Completion, HFEngine, SamplingParams
from rcl.serving.collective import (
    GlooGroup,
    GroupKind,
    WeightGroup,
    bucket_nbytes,
    parse_dtype,
    unpack_bucket,
)
from rcl.serving.prompt_logprobs import PositionLogprobs, sequence_logprobs
from rcl.serving.weights import NamedTensor, clean_name, weights_checksum


class UnsupportedOperation(RuntimeError):
    """The backend cannot do this (e.g. NCCL weight transfer on the hf engine)."""


class ServingBackend(Protocol):
    tokenizer: Any
    world_size: int
    group_kinds: tuple[GroupKind, ...]
    """Weight-group kinds `init_communicator` accepts; the first is the default."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]: ...

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]], top_k: int) -> list[list[PositionLogprobs | None]]:
        """Each prompt's per-position log-probs (`rcl.serving.prompt_logprobs`), or UnsupportedOperation."""
        ...

    def load_weights(self, named: Iterable[NamedTensor], first: bool = True, last: bool = True) -> int:
        """Copy the tensors into the served model; returns how many were loaded.

        `first` and `last` mark the first and last bucket of one update, for engines that process a layer's weights
        only once all of them have arrived (vLLM repacks weights for its kernels).
        """
        ...

    def checksum(self) -> str: ...

    def reset_prefix_cache(self) -> bool: ...

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str | None,
                          kind: GroupKind | None) -> None:
        """Join the weight group the client completes as its last rank (`kind` None: the engine's natural one)."""
        ...

    def update_named_param(self, name: str, dtype: str, shape: list[int]) -> None:
        """Receive one tensor broadcast by the client (TRL's protocol) and load it."""
        ...

    def receive_bucket(self, metas: list[dict], first: bool, last: bool) -> int:
        """Receive one flat bucket broadcast by the client (see `rcl.serving.collective`) and load its tensors."""
        ...

    def close_communicator(self) -> None: ...

    def close(self) -> None: ...


def torch_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else parse_dtype(name)


def resolve_target(name: str, targets: dict[str, torch.Tensor]) -> str | None:
    """The served model's key for a pushed name: wrapper prefixes removed, then leading components (such as a
    LightningModule's `model.` attribute) dropped until a key matches."""
    parts = clean_name(name).split(".")
    for start in range(len(parts)):
        candidate = ".".join(parts[start:])
        if candidate in targets:
            return candidate
    return None


class HFBackend:
    """Serve a transformers causal LM with `rcl.engines.HFEngine`; weights are copied into the live model."""

    world_size = 1
    group_kinds: tuple[GroupKind, ...] = ("gloo",)

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None, seed: int | None = None,
                 enable_lora: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rcl.tiny_models import resolve_model

        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)).to(device).eval()
        lm.requires_grad_(False)
        if seed is not None:
            torch.manual_seed(seed)
        self.model = lm
        self.engine = HFEngine(lm, self.tokenizer)
        self._lock = threading.Lock()
        self._group: WeightGroup | None = None
        self._written: set[int] | None = None
        """data_ptrs written since the `first` bucket of the update in progress."""
        from rcl.serving.adapters import MergingAdapterHost

        self._adapters = MergingAdapterHost(lm) if enable_lora else None

    def load_adapter(self, tensors: dict[str, torch.Tensor], config: dict, version: int) -> int:
        """Serve LoRA adapter `version` (merged into the base weights, as vLLM's LoRA kernels compute it)."""
        if self._adapters is None:
            raise UnsupportedOperation("this server takes no adapters: start it with `rcl serve --enable-lora`")
        with self._lock:
            return self._adapters.load(tensors, config, version)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        with self._lock:
            return self.engine.generate(prompts, params)

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]], top_k: int) -> list[list[PositionLogprobs | None]]:
        with self._lock:
            return [sequence_logprobs(self.model, prompt, top_k) for prompt in prompts]

    def _targets(self) -> dict[str, torch.Tensor]:
        targets = dict(self.model.named_parameters(remove_duplicate=False))
        targets.update(self.model.named_buffers(remove_duplicate=False))
        return targets

    @torch.no_grad()
    def load_weights(self, named: Iterable[NamedTensor], first: bool = True, last: bool = True) -> int:
        """Copy one bucket into the live model. An update that starts with `first` and ends with `last` must have
        written every parameter of the served model (tied ones count once): a push from a model that only partly
        matches the served one fails instead of leaving some of the server's own weights in place."""
        targets = self._targets()
        plan = []
        for name, tensor in named:  # check the whole bucket before touching the model
            key = resolve_target(name, targets)
            if key is None:
                raise ValueError(f"unknown weight {name!r}: the served model has no such parameter")
            if tuple(targets[key].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"shape mismatch for {name!r}: sent {list(tensor.shape)}, served {list(targets[key].shape)}"
                )
            plan.append((targets[key], tensor))
        if first:
            self._written = set()
        with self._lock:
            for target, tensor in plan:
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
        written = self._written
        if written is not None:
            written.update(target.data_ptr() for target, _ in plan)
            if last:
                self._written = None
                missing = [n for n, p in self.model.named_parameters() if p.data_ptr() not in written]
                if missing:
                    raise ValueError(f"the update did not cover {len(missing)} served parameters (e.g. "
                                     f"{', '.join(missing[:3])}): the pushed model is not the served one")
        return len(plan)

    def checksum(self) -> str:
        with self._lock:
            return weights_checksum(self.model.state_dict().items())

    def reset_prefix_cache(self) -> bool:
        return True  # HF generate keeps no cache between requests

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str | None,
                          kind: GroupKind | None = None) -> None:
        if self._group is not None:
            raise RuntimeError("communicator already initialised: call /close_communicator/ first")
        self._group = GlooGroup(host, port, rank=0, world_size=world_size)

    def _client_group(self) -> WeightGroup:
        if self._group is None:
            raise RuntimeError("no communicator: call /init_communicator/ first")
        return self._group

    def update_named_param(self, name: str, dtype: str, shape: list[int]) -> None:
        group = self._client_group()
        tensor = torch.empty(shape, dtype=parse_dtype(dtype))
        group.broadcast(tensor, src=group.world_size - 1)
        self.load_weights([(name, tensor)], first=False, last=False)  # TRL's per-tensor updates

    def receive_bucket(self, metas: list[dict], first: bool, last: bool) -> int:
        group = self._client_group()
        flat = torch.empty(bucket_nbytes(metas), dtype=torch.uint8)
        group.broadcast(flat, src=group.world_size - 1)
        return self.load_weights(unpack_bucket(flat, metas), first, last)

    def close_communicator(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None

    def close(self) -> None:
        pass
