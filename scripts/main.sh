#!/usr/bin/env bash
# The main job on the built-in default data (`shapes`, procedural dSprites-like images):
# train a small MMD-sculpted autoencoder on the CPU (a few minutes on 2 cores), score its
# held-out latents for independence (LPS) and for fit to the prior (MMD permutation test),
# export it to a verified ONNX bundle, and serve it over REST (:3000) and gRPC (:50051) until
# Ctrl-C. SERVE=0 stops after the export.
#   STEPS=3000 bash scripts/main.sh     a longer run (better reconstructions)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${VENV:-.venv}/bin/activate"

run=${RUN:-runs/main-$(date +%Y%m%d-%H%M%S)}
prior='gaussian'
echo "==> training an mmd autoencoder on shapes into $run"
sculpt train --data shapes --objective mmd --prior "$prior" --latent-dim 6 \
    --batch-size 128 --width 16 --max-steps "${STEPS:-800}" --out "$run"

echo "==> LPS-lgbm of the held-out latents (lower is better: 0 = no dimension predicts another)"
sculpt lps "$run/val_latents.npy" --regressor lgbm
echo "==> MMD^2 of the held-out latents against the prior $prior"
sculpt mmd "$run/val_latents.npy" --prior "$prior" --max-samples 1000
echo "==> exporting to the ONNX bundle $run-bundle"
sculpt export "$run" --out "$run-bundle"
sculpt inspect "$run-bundle"
echo "==> see $run/report/*.png, $run/metrics.jsonl, $run/summary.json and $run-bundle/"
if [ "${SERVE:-1}" != "0" ]; then
    echo "==> serving $run-bundle (Ctrl-C to stop)"
    exec sculpt serve "$run-bundle" --port "${PORT:-3000}" --grpc-port "${GRPC_PORT:-50051}"
fi
