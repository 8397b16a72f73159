#!/usr/bin/env bash
# GPU check (never part of CI; needs one CUDA GPU, no network). Sections, each printed under "== N.":
#   1. the device and library versions
#   2. numerics on the device: srft's chunked log-probs/entropy from hidden states equal the
#      naive path (values and gradients, float32), no positive log-prob in bfloat16, finite
#      gradients where a logit is -inf
#   3. memory and time of log-probs + entropy, forward + backward, T 1k/4k/8k over V 152k
#      (scripts/bench_logprobs.py --device cuda: srft, naive, and TRL's path when trl is installed)
#   4. the main job (`srft train`: SRFT on the testbed, 150 steps, then the accuracy table),
#      and GRPO on the testbed for $STEPS steps
#   5. a model of Qwen2.5-0.5B's shape (random weights, vocabulary 151,936; scripts/make_shape_model.py)
#      with 1,024-token responses (rollout.ignore_eos), log-probs from hidden states against full logits:
#      peak GPU memory, step time, time split
#   6. only with MODEL=DIR (a prepared SmolLM2-135M: `srft prepare-model smollm2-135m`): SRFT on CHAMP,
#      and with 2+ GPUs DDP and FSDP2 (with a resume)
#   7. only where vLLM is installed: rollout tokens/s of the HF and vLLM engines on the Qwen2.5-0.5B-shaped
#      model (scripts/bench_rollout.py), and the testbed main job's first steps with --rollout.engine vllm
# A failed section is reported and the next one runs; the exit status is 1 if any failed.
#
#   bash scripts/gpu_check.sh [OUT_DIR]            # about 7 minutes on one H100
#   SECTIONS="3 5" bash scripts/gpu_check.sh       # some sections only
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-runs/gpu_check}
STEPS=${STEPS:-8}
SECTIONS=${SECTIONS:-"1 2 3 4 5 6 7"}
BIG_TOKENS=${BIG_TOKENS:-1024}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"
FAILED=()
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
step() { echo; echo "== $*"; }
try() { local name=$1; shift; "$@" || { echo "!! section $name FAILED (exit $?)"; FAILED+=("$name"); }; }

summary() {  # one line per run: means over the steps after the first (warm-up)
  "$PY" - "$@" <<'PYEOF'
import json, sys
for d in sys.argv[1:]:
    try:
        rows = [json.loads(l) for l in open(d + "/metrics.jsonl") if l.strip() and '"step"' in l]
    except OSError:
        print(f"{d}: no metrics"); continue
    rows = [r for r in rows if "time/step" in r]
    first, rest = rows[0], rows[1:] or rows
    mean = lambda k: sum(r.get(k) or 0 for r in rest) / len(rest)
    print(f"{d.rsplit('/', 1)[-1]:<14} tokens/s {mean('throughput/tokens_per_s'):8.0f}  rollout tok/s "
          f"{mean('throughput/rollout_tokens_per_s'):7.0f}  train tok/s {mean('throughput/train_tokens_per_s'):8.0f}  "
          f"peak {max(r.get('memory/peak_allocated_gib') or 0 for r in rows):6.2f} GiB  step {mean('time/step'):6.2f} s "
          f"= rollout {mean('time/rollout'):.2f} + reward {mean('time/reward'):.2f} + pi_old "
          f"{mean('time/old_logprob'):.2f} + update {mean('time/update'):.2f}  step-1 loss {first.get('loss/total'):.6g}"
          f"  ({len(rest)} steps)")
PYEOF
}

if want 1; then
  step "1. device"
  try 1 "$PY" -c "
import torch, transformers, accelerate, os
print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)
assert torch.cuda.is_available() or os.environ.get('GPU_CHECK_ALLOW_CPU'), 'no CUDA device'
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(torch.cuda.get_device_name(0), f'{p.total_memory / 2**30:.0f} GiB,', torch.cuda.device_count(), 'GPU(s)')"
fi
DEV=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

if want 2; then
  step "2. numerics of the chunked log-probs on $DEV"
  try 2 "$PY" - "$DEV" <<'PYEOF'
import sys, torch
from srft.chunked_logprobs import chunked_logprobs_and_entropy
dev = sys.argv[1]
torch.manual_seed(0)
T, V, D = 700, 50_000, 256
h = torch.randn(T, D, device=dev, requires_grad=True)
w = (torch.randn(V, D, device=dev) * 0.05).requires_grad_()
y = torch.randint(0, V, (T,), device=dev)
gl, ge = torch.randn(T, device=dev), torch.randn(T, device=dev)
lp, ent = chunked_logprobs_and_entropy(h, w, y, temperature=0.7, chunk_size=100)
gh, gw = torch.autograd.grad((lp * gl).sum() + (ent * ge).sum(), (h, w))
z = torch.log_softmax((h @ w.t()) / 0.7, -1)
lp0, ent0 = z.gather(-1, y[:, None])[:, 0], -(z.exp() * z).sum(-1)
gh0, gw0 = torch.autograd.grad((lp0 * gl).sum() + (ent0 * ge).sum(), (h, w))
err = {k: ((a - b).abs().max() / b.abs().max().clamp(min=1)).item() for k, a, b in
       [("logp", lp, lp0), ("entropy", ent, ent0), ("grad h", gh, gh0), ("grad W", gw, gw0)]}
print("float32 max |srft - naive| / max(1, max |naive|):", {k: f"{v:.1e}" for k, v in err.items()})
assert all(v < 1e-4 for v in err.values()), err
hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
lpb, entb = chunked_logprobs_and_entropy(hb * 20, wb, y)
print(f"bfloat16 with 20x logits: max log-prob {lpb.max().item():.3g} (must be <= 0)")
assert (lpb <= 0).all()
bias_inf = torch.zeros(V, device=dev); bias_inf[::3] = float("-inf")
ws = w.detach().clone().requires_grad_()
hs = h.detach().clone().requires_grad_()
lp2, ent2 = chunked_logprobs_and_entropy(hs, ws, y - y % 3 + 1, bias=bias_inf)
g = torch.autograd.grad(lp2.sum() + ent2.sum(), (hs, ws))
print("a third of the logits -inf: gradients finite:", all(torch.isfinite(t).all().item() for t in g))
assert all(torch.isfinite(t).all() for t in g)
print("numerics ok")
PYEOF
fi

if want 3; then
  step "3. memory and time of log-probs + entropy (scripts/bench_logprobs.py --device $DEV)"
  try 3 "$PY" scripts/bench_logprobs.py --device "$DEV" ${BENCH_T:+--T $BENCH_T}
fi

if want 4; then
  step "4. the main job on $DEV (srft train: SRFT on the testbed, defaults), then GRPO for $STEPS steps"
  t0=$(date +%s)
  try 4 "$PY" -m srft.cli train --output-dir "$OUT/testbed-srft" --train.overwrite true ${MAIN_ARGS:-}
  echo "main job wall time: $(( $(date +%s) - t0 )) s"
  try 4 "$PY" -m srft.cli train --preset grpo --max-steps "$STEPS" --eval.limit 0 --train.save_every 0 \
      --output-dir "$OUT/testbed-grpo" --train.overwrite true
  summary "$OUT/testbed-srft" "$OUT/testbed-grpo"
fi

if want 5; then
  step "5. Qwen2.5-0.5B shape, random weights, bfloat16, $BIG_TOKENS-token responses: hidden-state path vs full logits"
  SHAPE=$OUT/shape-qwen2.5-0.5b
  [ -f "$SHAPE/config.json" ] || try 5 "$PY" scripts/make_shape_model.py --shape qwen2.5-0.5b --output-dir "$SHAPE"
  BIG=(--model "$SHAPE" --model.dtype bfloat16 --max-steps 3 --train.prompts_per_step ${BIG_PROMPTS:-8} --rollout.max_new_tokens
       "$BIG_TOKENS" --rollout.ignore_eos true --train.micro_batch_size 8 --optim.lr 1e-6 --eval.limit 0
       --train.save_every 0 --train.overwrite true)
  for path in auto logits; do
    try 5 "$PY" -m srft.cli train "${BIG[@]}" --train.logprob_path $path --output-dir "$OUT/qwen0.5b-$path"
  done
  summary "$OUT/qwen0.5b-auto" "$OUT/qwen0.5b-logits"
fi

if want 6 && [ -n "${MODEL:-}" ]; then
  step "6. SmolLM2-135M ($MODEL) on CHAMP, bfloat16"
  ARGS=(--model "$MODEL" --data.dataset champ --max-steps "$STEPS" --train.prompts_per_step 16
        --rollout.n_rollouts 7 --rollout.max_new_tokens 512 --data.max_demo_tokens 1024
        --model.dtype bfloat16 --optim.lr 1e-6 --train.micro_batch_size 16 --rollout.batch_size 128
        --train.eval_every 0 --train.save_every "$STEPS" --train.overwrite true)
  NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  try 6 "$PY" -m srft.cli train "${ARGS[@]}" --output-dir "$OUT/smol-1gpu"
  RUNS=("$OUT/smol-1gpu")
  if [ "$NGPU" -ge 2 ]; then
    try 6 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m srft.cli train "${ARGS[@]}" \
        --output-dir "$OUT/smol-ddp2"
    try 6 "$PY" -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 \
        -m srft.cli train "${ARGS[@]}" --output-dir "$OUT/smol-fsdp2"
    try 6 "$PY" -m accelerate.commands.launch --config_file examples/accelerate/fsdp2.yaml --num_processes 2 \
        -m srft.cli train --resume "$OUT/smol-fsdp2" --max-steps $((STEPS + 1))
    RUNS+=("$OUT/smol-ddp2" "$OUT/smol-fsdp2")
  fi
  summary "${RUNS[@]}"
fi

if want 7 && "$PY" -c "import vllm" >/dev/null 2>&1; then
  step "7. vLLM: rollout tokens/s against the HF engine, then SRFT on the testbed with vLLM rollouts"
  SHAPE=$OUT/shape-qwen2.5-0.5b
  [ -f "$SHAPE/config.json" ] || try 7 "$PY" scripts/make_shape_model.py --shape qwen2.5-0.5b --output-dir "$SHAPE"
  try 7 "$PY" scripts/bench_rollout.py --model "$SHAPE" --dtype bfloat16 --prompts 64 --max-new-tokens 512
  try 7 "$PY" -m srft.cli train --rollout.engine vllm --max-steps "$STEPS" --eval.limit 0 --train.save_every 0 \
      --output-dir "$OUT/testbed-vllm" --train.overwrite true
  summary "$OUT/testbed-vllm"
fi

echo
if [ ${#FAILED[@]} -eq 0 ]; then echo "gpu_check: all sections passed"; else echo "gpu_check: FAILED sections: ${FAILED[*]}"; exit 1; fi
