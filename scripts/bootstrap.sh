#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment: CPU torch first, then minigpt with its extras.
# Sourced by recipes/quickstart.sh and tests/run.sh, so each of them works on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MINIGPT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  echo "[bootstrap] installing torch==2.13.0 (the CPU build; install a CUDA build yourself on GPU machines)"
  pip install -q torch==2.13.0
fi
if ! python -c "import modeling_minigpt, trl, pytest, hypothesis, ruff" 2>/dev/null; then
  echo "[bootstrap] installing minigpt[train,dev]"
  pip install -q -e "$ROOT[train,dev]"
fi
