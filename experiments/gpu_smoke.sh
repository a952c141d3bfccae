#!/usr/bin/env bash
# GPU smoke test of the served RL path: one vLLM teacher server on GPU 0, training on GPU 1, 4 RL steps,
# weights pushed to the server after every optimizer step (WeightSync callback).
#
#   experiments/gpu_smoke.sh                      # tiny-10m built locally, vLLM engine, HTTP buckets
#   TRANSPORT=nccl experiments/gpu_smoke.sh       # buckets broadcast over vLLM's NCCL weight group
#   ENGINE=hf experiments/gpu_smoke.sh            # same with the hf engine (no vLLM needed; http or gloo only)
#   MODEL=Qwen/Qwen3-0.6B RECIPE=lightning_configs/teacher_rcl.yaml experiments/gpu_smoke.sh
#
# Needs 2 visible GPUs and, for ENGINE=vllm, vLLM in this environment (pip install 'rcl[vllm]'; vLLM pins its own
# torch, so use a separate venv for GPU serving). The student runs in process on the training GPU.
# Passes when training exits 0 and the teacher server log shows weight updates and no traceback.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
ENGINE=${ENGINE:-vllm}
MODEL=${MODEL:-tiny-10m}
RECIPE=${RECIPE:-lightning_configs/quickstart_rcl.yaml}
RUN_DIR=${RUN_DIR:-runs/gpu_smoke-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-8765}
TRANSPORT=${TRANSPORT:-http}

"$PYTHON" - <<'PY'
import torch, sys
n = torch.cuda.device_count()
sys.exit(0 if n >= 2 else f"gpu_smoke: needs 2 GPUs (one server, one trainer), found {n}")
PY

"$PYTHON" -m rcl launch \
  --config "$RECIPE" \
  --teacher-gpus 0 --train-gpus 1 \
  --engine "$ENGINE" --gpu-memory-utilization 0.5 --server-args="--dtype bfloat16" \
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
