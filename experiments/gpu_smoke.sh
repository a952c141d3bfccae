#!/usr/bin/env bash
# GPU smoke test of the served RL path: one teacher server, training, 4 RL steps, weights pushed to the server after
# every optimizer step (WeightSync callback). With 2+ GPUs the server gets GPU 0 and training GPU 1; with one GPU they
# share it (`rcl launch --share-gpus`; the vLLM server then takes 0.3 of its memory).
#
#   experiments/gpu_smoke.sh                      # tiny-10m built locally, vLLM engine, HTTP buckets
#   TRANSPORT=nccl experiments/gpu_smoke.sh       # buckets broadcast over vLLM's NCCL weight group (needs 2 GPUs)
#   ENGINE=hf experiments/gpu_smoke.sh            # the hf engine (no vLLM needed; TRANSPORT http or gloo)
#   MODEL=Qwen/Qwen3-0.6B RECIPE=lightning_configs/teacher_rcl.yaml experiments/gpu_smoke.sh
#
# ENGINE=vllm needs vLLM where the server runs: this environment, or SERVER_PYTHON=/path/to/vllm-venv/bin/python (vLLM
# pins its own torch, so a separate venv with rcl installed is usual). The student runs in process on the training GPU.
# Passes when training exits 0 and the teacher server log shows 4 weight updates and no traceback.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
ENGINE=${ENGINE:-vllm}
MODEL=${MODEL:-tiny-10m}
RECIPE=${RECIPE:-lightning_configs/quickstart_rcl.yaml}
RUN_DIR=${RUN_DIR:-runs/gpu_smoke-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-8765}
TRANSPORT=${TRANSPORT:-http}
SERVER_PYTHON=$(command -v "${SERVER_PYTHON:-$PYTHON}") || {
  echo "gpu_smoke: no interpreter ${SERVER_PYTHON:-$PYTHON} (SERVER_PYTHON/PYTHON)"; exit 1; }

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())") || {
  echo "gpu_smoke: $PYTHON cannot import torch"; exit 1; }
if [ "$GPUS" -ge 2 ]; then
  PLACEMENT=(--teacher-gpus 0 --train-gpus 1 --gpu-memory-utilization 0.5)
elif [ "$GPUS" -eq 1 ]; then
  PLACEMENT=(--teacher-gpus 0 --train-gpus 0 --share-gpus --gpu-memory-utilization 0.3)
else
  echo "gpu_smoke: needs a CUDA GPU, found none"; exit 1
fi
if [ "$ENGINE" = vllm ] && ! "$SERVER_PYTHON" -c "import vllm" 2>/dev/null; then
  echo "gpu_smoke: $SERVER_PYTHON has no vLLM; install it (pip install 'rcl[vllm]'), set SERVER_PYTHON, or run ENGINE=hf $0"
  exit 1
fi
echo "gpu_smoke: $GPUS GPU(s), engine $ENGINE, transport $TRANSPORT, model $MODEL, run dir $RUN_DIR"

"$PYTHON" -m rcl launch \
  --config "$RECIPE" "${PLACEMENT[@]}" \
  --engine "$ENGINE" --server-python "$SERVER_PYTHON" --server-args="--dtype bfloat16" \
  --base-port "$PORT" --run-dir "$RUN_DIR" --health-timeout 900 \
  --teacher.model_name_or_path "$MODEL" --student.model_name_or_path "$MODEL" \
  --trainer.max_steps 4 --trainer.out_dir "$RUN_DIR/train" \
  --grpo.prompts_per_step 4 --grpo.num_generations 4 --engines.sync_transport "$TRANSPORT"

LOG="$RUN_DIR/servers/teacher-0.log"
if grep -q "Traceback" "$LOG"; then
  echo "gpu_smoke: FAILED, traceback in $LOG"; exit 1
fi
if ! grep -q "weights_version=4" "$LOG"; then
  echo "gpu_smoke: FAILED, the teacher server did not receive 4 weight updates (see $LOG)"; exit 1
fi
echo "gpu_smoke: OK (server log $LOG, training output $RUN_DIR/train)"
