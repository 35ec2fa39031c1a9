#!/usr/bin/env bash
# Set up (if needed), then lint, check the import contracts, and run the default test suite
# (slow and gpu tests excluded).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${VENV:-.venv}/bin/activate"
ruff check .
ruff format --check .
python scripts/lint_imports.py  # the architecture contracts in pyproject.toml ([tool.importlinter])
python -m pytest "$@"
