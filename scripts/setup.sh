#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtualenv in .venv with torch, then vlbench and its test extras.
# torch is pinned first on purpose: a bare `torch` requirement with no torch installed pulls the newest
# CUDA build (several GB). torch==2.13.0 resolves to the local CPU wheel on the CI machines and to the
# ordinary CUDA wheel from PyPI on a GPU machine. Override with TORCH_SPEC="torch==X torchvision==Y".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 torchvision==0.28.0"}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install --quiet $TORCH_SPEC
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "vlbench installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
