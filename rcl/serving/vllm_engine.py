"""The `vllm` serving backend: `vllm.LLM` plus a worker extension that loads weights sent by the trainer.

Weights arrive as safetensors buckets over HTTP (handed to every worker with `collective_rpc`), or over a weight group
that the client joins as the last rank (`init_communicator`; NCCL on GPUs, gloo on vLLM's CPU build): as flat
buckets (`rcl_receive_bucket`) or, for TRL clients, one tensor at a time (`update_named_param`).
Names are Hugging Face checkpoint names; vLLM's own `load_weights` maps them onto its fused layers.

vLLM pins its own torch and transformers: install it into a separate environment (`pip install 'rcl[vllm]'`).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from rcl.engines import Completion, SamplingParams
from rcl.serving.protocol import sampling_fields
from rcl.serving.collective import (
    GroupKind,
    WeightGroup,
    bucket_nbytes,
    open_group,
    parse_dtype,
    unpack_bucket,
)
from rcl.serving.weights import NamedTensor, encode_bucket, weights_checksum

MISSING_VLLM = "the vllm engine needs vLLM, which is not installed: pip install 'rcl[vllm]' (or use --engine hf)"
EXTENSION = "rcl.serving.vllm_engine.WeightSyncExtension"


class WeightSyncExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); methods are called through `LLM.collective_rpc`."""

    device: torch.device
    model_runner: Any

    def rcl_load_bucket(self, data: bytes, first: bool = True, last: bool = True) -> int:
        from safetensors.torch import load

        return self._rcl_load(list(load(data).items()), first, last)

    def _rcl_load(self, named: list[NamedTensor], first: bool, last: bool) -> int:
        """Load tensors through vLLM's layerwise reload; one update may span several calls (`first` ... `last`).

        A plain `model.load_weights` fails once vLLM has processed the weights for its kernels (the CPU backend
        repacks every linear layer; quantized models too). The layerwise reload buffers each layer's checkpoint
        tensors until the layer is complete, then processes it.
        """
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        model = self.model_runner.model
        with set_current_vllm_config(self.vllm_config):
            if first or not getattr(self, "_rcl_reloading", False):
                initialize_layerwise_reload(model)
                self._rcl_reloading = True
            model.load_weights(weights=[(n, t.to(self.device)) for n, t in named])
        if last:
            self.rcl_finish_update()
        return len(named)

    def rcl_finish_update(self) -> None:
        """Process what the open reload buffered (TRL's per-tensor updates end here, at the prefix-cache reset)."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if not getattr(self, "_rcl_reloading", False):
            return
        model = self.model_runner.model
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(model, self.vllm_config.model_config)
            self._rcl_refresh_tied_lm_head(model)
        self._rcl_reloading = False

    def _rcl_refresh_tied_lm_head(self, model: Any) -> None:
        """A tied lm_head shares the embedding's weight but receives no tensors of its own, so the reload leaves any
        kernel state derived from it (the CPU backend's packed GEMM) stale: derive it again."""
        config = self.vllm_config.model_config.hf_text_config
        lm_head = getattr(model, "lm_head", None)
        quant_method = getattr(lm_head, "quant_method", None)
        if getattr(config, "tie_word_embeddings", False) and quant_method is not None:
            quant_method.process_weights_after_loading(lm_head)

    def rcl_checksum(self) -> str:
        return weights_checksum(self.model_runner.model.named_parameters())

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str | None = None,
                          kind: GroupKind = "nccl") -> None:
        from vllm.distributed.parallel_state import get_world_group

        if getattr(self, "_rcl_group", None) is not None:
            raise RuntimeError("communicator already initialised: call /close_communicator/ first")
        if kind == "nccl" and client_device_uuid is not None:
            if client_device_uuid == str(torch.cuda.get_device_properties(self.device).uuid):
                raise RuntimeError("the trainer and the server share a GPU; NCCL needs them on different GPUs")
        self._rcl_group = open_group(kind, host, port, get_world_group().rank, world_size, self.device)

    def _rcl_client_group(self) -> WeightGroup:
        group = getattr(self, "_rcl_group", None)
        if group is None:
            raise RuntimeError("no communicator: call /init_communicator/ first")
        return group

    def update_named_param(self, name: str, dtype: str, shape: list[int]) -> None:
        group = self._rcl_client_group()
        weight = torch.empty(shape, dtype=parse_dtype(dtype), device=self.device)
        group.broadcast(weight, src=group.world_size - 1)
        self._rcl_load([(name, weight)], first=False, last=False)

    def rcl_receive_bucket(self, metas: list[dict], first: bool, last: bool) -> int:
        group = self._rcl_client_group()
        flat = torch.empty(bucket_nbytes(metas), dtype=torch.uint8, device=self.device)
        group.broadcast(flat, src=group.world_size - 1)
        return self._rcl_load(unpack_bucket(flat, metas), first, last)

    def close_communicator(self) -> None:
        group = getattr(self, "_rcl_group", None)
        if group is not None:
            group.close()
        self._rcl_group = None


def top_of(step: dict[int, Any], k: int) -> list[tuple[int, float]]:
    """vLLM's per-token log-prob dict (the sampled token, at its own rank, and the k most likely) as the k most likely
    (id, log-prob) pairs, most likely first, as `Completion.top_logprobs` holds them."""
    ranked = sorted((entry.rank, token, entry.logprob) for token, entry in step.items() if entry.rank <= k)
    return [(token, logprob) for _, token, logprob in ranked if logprob != float("-inf")]


def vllm_sampling_params(params: SamplingParams, logprobs: bool = True) -> Any:
    from vllm import SamplingParams as VLLMSamplingParams

    # stop strings stay in the completion, as in HFEngine
    return VLLMSamplingParams(
        **sampling_fields(params), include_stop_str_in_output=True, logprobs=params.top_logprobs if logprobs else None
    )


class VLLMBackend:
    # vLLM's CPU build has no NCCL: its weight group is gloo there
    group_kinds: tuple[GroupKind, ...] = ("gloo", "nccl") if torch.version.cuda is None else ("nccl", "gloo")

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        seed: int | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = False,
        enforce_eager: bool = False,
        enable_lora: bool = False,
        max_lora_rank: int = 64,
    ):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(MISSING_VLLM) from exc
        from rcl.tiny_models import resolve_model

        kwargs: dict[str, Any] = dict(
            model=resolve_model(model),
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            worker_extension_cls=EXTENSION,
            # log-probs of the distribution actually sampled from (after temperature and filters), as HFEngine returns
            logprobs_mode="processed_logprobs",
        )
        if seed is not None:
            kwargs["seed"] = seed
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        self.enable_lora = enable_lora
        self._lora_request: Any = None
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.world_size = tensor_parallel_size

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, sampling_params=vllm_sampling_params(params), use_tqdm=False,
                                    lora_request=self._lora_request)
        result = []
        for out in outputs:
            group = []
            for seq in out.outputs:
                ids = list(seq.token_ids)
                lps = [step[tok].logprob for step, tok in zip(seq.logprobs, ids)] if seq.logprobs else None
                top = [top_of(step, params.top_logprobs) for step in seq.logprobs] \
                    if seq.logprobs and params.top_logprobs else None
                reason = "stop" if seq.finish_reason == "stop" else "length"
                group.append(Completion(ids, lps, reason, self.tokenizer.decode(ids, skip_special_tokens=True),
                                        top_logprobs=top))
            result.append(group)
        return result

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]], top_k: int) -> list:
        from rcl.serving.backends import UnsupportedOperation

        raise UnsupportedOperation("prompt log-probs are served by the hf engine here; vLLM's own `vllm serve` "
                                   "answers prompt_logprobs itself")

    def load_weights(self, named: Iterable[NamedTensor], first: bool = True, last: bool = True) -> int:
        return self.llm.collective_rpc("rcl_load_bucket", args=(encode_bucket(named), first, last))[0]

    def load_adapter(self, tensors: dict, config: dict, version: int) -> int:
        """Write the adapter as a peft folder and serve every later request with it as LoRA request `version`."""
        import json
        import tempfile
        from pathlib import Path

        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        from rcl.serving.backends import UnsupportedOperation

        if not self.enable_lora:
            raise UnsupportedOperation("this server takes no adapters: start it with `rcl serve --enable-lora`")
        folder = Path(tempfile.mkdtemp(prefix=f"rcl-adapter-v{version}-"))
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(config))
        self._lora_request = LoRARequest(f"rcl-v{version}", version, str(folder))
        return len(tensors)

    def checksum(self) -> str:
        return "|".join(self.llm.collective_rpc("rcl_checksum"))

    def reset_prefix_cache(self) -> bool:
        self.llm.collective_rpc("rcl_finish_update")
        return bool(self.llm.reset_prefix_cache())

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str | None,
                          kind: GroupKind | None = None) -> None:
        kind = kind or self.group_kinds[0]
        self.llm.collective_rpc("init_communicator", args=(host, port, world_size, client_device_uuid, kind))

    def receive_bucket(self, metas: list[dict], first: bool, last: bool) -> int:
        return self.llm.collective_rpc("rcl_receive_bucket", args=(metas, first, last))[0]

    def update_named_param(self, name: str, dtype: str, shape: list[int]) -> None:
        self.llm.collective_rpc("update_named_param", args=(name, dtype, shape))

    def close_communicator(self) -> None:
        self.llm.collective_rpc("close_communicator")

    def close(self) -> None:
        shutdown = getattr(getattr(self.llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
