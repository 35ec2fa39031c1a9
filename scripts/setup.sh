#!/usr/bin/env bash
# Create .venv (once) and install sculptserve with its training, CPU-serving and dev extras.
# Idempotent: re-running only reinstalls when pyproject.toml changed.
#   PYTHON=python3.12 bash scripts/setup.sh         pick the interpreter (>= 3.11)
#   TORCH_SPEC='torch==2.13.0' bash scripts/setup.sh  pick the torch build installed first
#   SCULPT_EXTRAS='train,gpu,dev' bash scripts/setup.sh  onnxruntime-gpu instead of onnxruntime
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# Installed first and explicitly: left to the resolver, `torch` pulls a multi-GB CUDA build.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${SCULPT_EXTRAS:-train,cpu,dev}
STAMP="$VENV/.sculpt-installed"

"$PYTHON" - <<'PY' || { echo "sculptserve needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi

want="$TORCH_SPEC [$EXTRAS] $(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

echo "==> installing sculptserve[$EXTRAS] into $VENV (first time: a few minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
echo "$want" > "$STAMP"
