#!/usr/bin/env bash
# The main job on built-in data. Until training lands (issue: `sculpt train`), it exercises the
# scoring tools on prior samples: it draws an independent hybrid prior and a correlated one,
# then scores both for independence (LPS) and for fit to the target prior (MMD).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${VENV:-.venv}/bin/activate"

out=${OUT:-runs/demo}
spec='6:gaussian+2:uniform(-2,2)'
echo "==> the prior $spec, in full:"
sculpt prior show "$spec"
sculpt prior sample "$spec" -n 10000 --seed 0 --out "$out/independent.npy"
sculpt prior sample 'correlated(0.6)' --dim 8 -n 10000 --seed 1 --out "$out/correlated.npy"

echo "==> LPS (lower is better): independent dimensions score about 0"
sculpt lps "$out/independent.npy" --regressor lgbm
echo "==> LPS of equicorrelated (rho 0.6) dimensions"
sculpt lps "$out/correlated.npy" --regressor lgbm
echo "==> MMD^2 to the target prior: the first sample matches it, the second does not"
sculpt mmd "$out/independent.npy" --prior "$spec" --max-samples 1000
sculpt mmd "$out/correlated.npy" --prior "$spec" --max-samples 1000
