#!/usr/bin/env bash
# Every check that needs a GPU, in one command, with a PASS/FAIL line and the wall time of each:
#   1. the gpu-marked tests (pytest -m gpu): SFT in bf16; 2 RL steps under DeepSpeed ZeRO-3 and under FSDP; QLoRA
#      adapters on an 8-bit and a 4-bit base (test_lora.py::test_qlora_*, needs bitsandbytes); LoRA RL under
#      ZeRO-3 and FSDP with the merged export (test_lora.py::test_lora_rl_under_a_sharded_strategy_*); vLLM
#      serving a pushed LoRA adapter like the trainer's merged model (test_adapter_sync.py::test_vllm_*, needs
#      vLLM in this Python),
#   2. experiments/gpu_smoke.sh with the hf engine, over HTTP and over gloo,
#   3. with vLLM installed: gpu_smoke.sh with the vllm engine over HTTP, and over NCCL when there are 2+ GPUs,
#   4. with vLLM and ASYNC_MODEL (a local model folder): the async benchmark, sync vs max_off_policy_steps 1.
#
#   experiments/gpu_checks.sh                     # logs and summary.txt under runs/gpu_checks-<time>/
#   SERVER_PYTHON=/path/to/vllm-venv/bin/python experiments/gpu_checks.sh   # vLLM servers from their own venv
#
# Needs rcl importable with its extras (pip install -e ".[dev,qlora]"; vLLM for its tests). Exits non-zero
# when any check fails; a check whose requirement is missing is reported as SKIP with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-runs/gpu_checks-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
FAILED=0

{
  echo "gpu_checks $(date -u +%Y-%m-%dT%H:%M:%SZ) at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
} | tee "$SUMMARY"

check() {  # check NAME COMMAND...: run it, log to $OUT_DIR/NAME.log, one summary line
  local name=$1; shift
  local start=$SECONDS
  if "$@" >"$OUT_DIR/$name.log" 2>&1; then
    echo "PASS $name ($((SECONDS - start)) s)" | tee -a "$SUMMARY"
  else
    echo "FAIL $name ($((SECONDS - start)) s): tail of $OUT_DIR/$name.log" | tee -a "$SUMMARY"
    tail -n 20 "$OUT_DIR/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
    FAILED=1
  fi
}
skip() { echo "SKIP $1: $2" | tee -a "$SUMMARY"; }

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())") || {
  echo "gpu_checks: $PYTHON cannot import torch" | tee -a "$SUMMARY"; exit 1; }
if [ "$GPUS" -lt 1 ]; then
  echo "gpu_checks: no CUDA GPU visible" | tee -a "$SUMMARY"; exit 1
fi

check pytest_gpu "$PYTHON" -m pytest -m gpu -v -rs -p no:cacheprovider tests/
# a gpu test whose package is missing (bitsandbytes, deepspeed, vllm) skips inside a passing run: list each one
grep -E "^SKIPPED" "$OUT_DIR/pytest_gpu.log" | sed "s/^/SKIP pytest_gpu: /" | tee -a "$SUMMARY"
for transport in http gloo; do
  check "smoke_hf_$transport" env PYTHON="$PYTHON" SERVER_PYTHON="$PYTHON" ENGINE=hf TRANSPORT=$transport \
    RUN_DIR="$OUT_DIR/smoke_hf_$transport" experiments/gpu_smoke.sh
done
SERVER_PYTHON=${SERVER_PYTHON:-$PYTHON}
export SERVER_PYTHON
if "$SERVER_PYTHON" -c "import vllm" 2>/dev/null; then
  check smoke_vllm_http env PYTHON="$PYTHON" ENGINE=vllm TRANSPORT=http RUN_DIR="$OUT_DIR/smoke_vllm_http" \
    experiments/gpu_smoke.sh
  if [ "$GPUS" -ge 2 ]; then
    check smoke_vllm_nccl env PYTHON="$PYTHON" ENGINE=vllm TRANSPORT=nccl RUN_DIR="$OUT_DIR/smoke_vllm_nccl" \
      experiments/gpu_smoke.sh
  else
    skip smoke_vllm_nccl "NCCL cannot link a server and the trainer on one GPU; needs 2 GPUs"
  fi
  if [ -n "${ASYNC_MODEL:-}" ]; then  # a local 0.5B-1.5B folder: sync vs async, tokens/s/GPU, MFU, push seconds
    check async_vllm env RCL_BENCHMARKS_DIR="$OUT_DIR/async" "$PYTHON" -m experiments.benchmarks async \
      --preset "$ASYNC_MODEL" --engine vllm --accelerator cuda --dtype bfloat16 --server-core -1 --trainer-core -1 \
      --steps 20 --max-completion-length 256 --settings 0 1
  else
    skip async_vllm "set ASYNC_MODEL to a local 0.5B-1.5B model folder (the machine is offline)"
  fi
else
  skip smoke_vllm "vLLM is not installed (pip install 'rcl[vllm]')"
fi

echo "summary: $SUMMARY"
exit $FAILED
