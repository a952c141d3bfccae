"""Generation servers and the client side of them.

- `server`: `python -m rcl serve` (FastAPI; TRL vllm-serve compatible endpoints + bucketed `/update_weights/`)
- `protocol`: request/response models and limits; `backends`: the hf backend; `vllm_engine`: the vLLM backend
- `client`: `ServerEngine`, the `GenerationEngine` over a pool of servers, with `update_weights`
- `weights`: full-weight gathering under DDP/ZeRO-3/FSDP1/FSDP2/PEFT, buckets, checksums
"""
