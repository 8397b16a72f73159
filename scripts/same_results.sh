#!/usr/bin/env bash
# Same results before and after a refactoring: runs the same training commands with the code of
# OLD_COMMIT and with this working tree, and exits 0 only if every pair matches.
#
#   bash scripts/same_results.sh OLD_COMMIT [WORK_DIR]
#
# OLD_COMMIT is checked out into a temporary git worktree and run with this tree's .venv
# (PYTHONPATH puts the old package first; each run prints which srft it imported). The runs:
#   main      the default main job (`srft train`, SRFT on the testbed) for 20 steps
#   grpo, sft_then_grpo, hpt, chord       6 steps each (16 prompts a step, 40 evaluation problems)
#   resume    SRFT for 8 steps, killed with SIGKILL as soon as its step-4 checkpoint is in place,
#             then `srft train --resume`
#   ddp2      2 processes (torchrun, gloo) for 3 steps
# Match: byte-identical final/model.safetensors, and metrics.jsonl rows equal field by field apart
# from the time/ and throughput/ fields (wall-clock measurements). eval.json's accuracies are
# compared too. The testbed base model is built once (SRFT_CACHE, shared by both trees).
# WORK_DIR (default: a new temporary folder) keeps both trees' run folders for inspection; with
# SAME_RESULTS_REUSE_OLD=1, the old tree's finished run folders already in WORK_DIR are kept (its code
# does not change), SAME_RESULTS_ONLY="main grpo ..." runs a subset of the jobs, and
# SAME_RESULTS_ALLOW_NEW_METRICS=1 lists metrics that only the new tree logs instead of failing on them
# (every field both trees log must still be equal).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OLD="${1:?usage: bash scripts/same_results.sh OLD_COMMIT [WORK_DIR]}"
WORK="${2:-$(mktemp -d -t srft-same-XXXXXX)}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || { echo "same_results: $PY not found; run bash scripts/setup.sh first" >&2; exit 2; }
mkdir -p "$WORK"
OLD_TREE="$WORK/old-tree"
if [ ! -d "$OLD_TREE" ]; then
  git -C "$REPO" worktree add --detach "$OLD_TREE" "$OLD" >/dev/null
fi
trap 'git -C "$REPO" worktree remove --force "$OLD_TREE" >/dev/null 2>&1 || true' EXIT
export ACCELERATE_USE_CPU=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false
export SRFT_CACHE="${SRFT_CACHE:-$HOME/.cache/srft}"
SMALL=(--train.prompts_per_step 16 --eval.limit 40 --train.eval_every 0)

tree_src() {  # tree_src TREE: the folder holding the package of TREE (old or new)
  if [ "$1" = old ]; then echo "$OLD_TREE"; else echo "$REPO"; fi
}

srft_in() {  # srft_in TREE ARGS...: the srft command with TREE's package
  local src; src="$(tree_src "$1")"; shift
  (cd "$src" && PYTHONPATH="$src" "$PY" -m srft.cli "$@")
}

keep_old() {  # keep_old TREE OUT: true when the old tree's finished run in OUT is to be reused
  [ "$1" = old ] && [ "${SAME_RESULTS_REUSE_OLD:-0}" = 1 ] && [ -f "$2/eval.json" ] && [ -d "$2/final" ] \
    && echo "[same_results] old: $(basename "$2") reused" >&2
}

run_pair() {  # run_pair NAME ARGS...
  local name="$1"; shift
  for tree in old new; do
    local out="$WORK/$tree-$name"
    if keep_old "$tree" "$out"; then continue; fi
    rm -rf "$out"
    echo "[same_results] $tree: $name" >&2
    srft_in "$tree" train --output-dir "$out" "$@" >"$WORK/$tree-$name.log" 2>&1 \
      || { echo "[same_results] $tree $name failed; log: $WORK/$tree-$name.log" >&2; tail -20 "$WORK/$tree-$name.log" >&2; exit 1; }
  done
}

run_killed() {  # run_killed NAME ARGS...: killed after the step-4 checkpoint, then resumed
  local name="$1"; shift
  for tree in old new; do
    local out="$WORK/$tree-$name" src
    src="$(tree_src "$tree")"
    if keep_old "$tree" "$out"; then continue; fi
    rm -rf "$out"
    echo "[same_results] $tree: $name (SIGKILL after the step-4 checkpoint, then --resume)" >&2
    (cd "$src" && PYTHONPATH="$src" exec "$PY" -m srft.cli train --output-dir "$out" "$@" >"$WORK/$tree-$name.log" 2>&1) &
    local pid=$!
    local waited=0
    until [ -f "$out/checkpoints/step-000004/trainer_state.json" ]; do
      sleep 0.2; waited=$((waited + 1))
      if ! kill -0 "$pid" 2>/dev/null || [ $waited -gt 3000 ]; then
        echo "[same_results] $tree $name: no step-4 checkpoint appeared" >&2; tail -20 "$WORK/$tree-$name.log" >&2; exit 1
      fi
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ ! -d "$out/final" ] || { echo "[same_results] $tree $name: the run ended before the kill" >&2; exit 1; }
    srft_in "$tree" train --resume "$out" >>"$WORK/$tree-$name.log" 2>&1 \
      || { echo "[same_results] $tree $name: resume failed" >&2; tail -20 "$WORK/$tree-$name.log" >&2; exit 1; }
  done
}

run_ddp() {  # run_ddp NAME ARGS...: 2 processes through torchrun
  local name="$1"; shift
  for tree in old new; do
    local out="$WORK/$tree-$name" src
    if [ "$tree" = old ]; then src="$OLD_TREE"; else src="$REPO"; fi
    if keep_old "$tree" "$out"; then continue; fi
    rm -rf "$out"
    echo "[same_results] $tree: $name (2 processes)" >&2
    (cd "$src" && PYTHONPATH="$src" OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone \
      --nproc_per_node 2 -m srft.cli train --output-dir "$out" "$@" >"$WORK/$tree-$name.log" 2>&1) \
      || { echo "[same_results] $tree $name failed" >&2; tail -20 "$WORK/$tree-$name.log" >&2; exit 1; }
  done
}

# which package each tree imports (PYTHONPATH must win over the editable install)
for tree in old new; do
  src="$(tree_src "$tree")"
  got=$(cd "$src" && PYTHONPATH="$src" "$PY" -c 'import srft, os; print(os.path.dirname(os.path.dirname(srft.__file__)))')
  [ "$got" = "$src" ] || { echo "[same_results] $tree tree imports srft from $got, not $src" >&2; exit 2; }
done
echo "[same_results] old: $OLD ($(git -C "$OLD_TREE" rev-parse --short HEAD)); new: $REPO ($(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- srft || echo ' + uncommitted changes'))"
echo "[same_results] work folder: $WORK"

# the testbed base model, built once before either tree runs (a no-op when cached)
srft_in new build-testbed >"$WORK/build-testbed.log" 2>&1

ONLY="${SAME_RESULTS_ONLY:-main grpo sft_then_grpo hpt chord resume ddp2}"
for job in $ONLY; do
  case "$job" in
    main) run_pair main --max-steps 20 ;;
    grpo|sft_then_grpo|hpt|chord) run_pair "$job" --preset "$job" --max-steps 6 "${SMALL[@]}" ;;
    resume) run_killed resume --max-steps 8 --train.save_every 4 "${SMALL[@]}" ;;
    ddp2) run_ddp ddp2 --max-steps 3 --train.prompts_per_step 8 --eval.limit 20 --train.eval_every 0 ;;
    *) echo "[same_results] unknown job $job" >&2; exit 2 ;;
  esac
done

NEW_METRICS=""; [ "${SAME_RESULTS_ALLOW_NEW_METRICS:-0}" = 1 ] && NEW_METRICS="--allow-new-metrics"
"$PY" "$REPO/scripts/compare_runs.py" "$WORK" $ONLY $NEW_METRICS
