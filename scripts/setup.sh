#!/usr/bin/env bash
# Create .venv at the repository root and install srft into it (idempotent).
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh --test   # the package and the test tools
# TORCH_SPEC picks the PyTorch build (default: torch==2.13.0; on a machine whose
# PyPI mirror only has CUDA builds, set e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test,tensorboard]"
.venv/bin/python -m pip install -q -e ".${extras}"
# CHAMP (the offline real math set): the data only; the package's own dependencies are not needed
.venv/bin/python -m pip install -q --no-deps "champ-dataset==1.0.0"
echo "srft installed in .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
