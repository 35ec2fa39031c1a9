#!/usr/bin/env bash
# The main job on the built-in default data (`shapes`, procedural dSprites-like images):
# train a small MMD-sculpted autoencoder on the CPU (4 to 6.5 minutes on 2 cores; the size and
# objective come from benchmarks/objective_study.md: 32x32, d = 5, imq kernel, the explicit
# independence term on), score its held-out latents with `sculpt eval` (LPS, fit to the prior,
# supervised disentanglement),
# export it to a verified ONNX bundle, and serve it over REST (:3000) and gRPC (:50051) until
# Ctrl-C. SERVE=0 stops after the export.
#   STEPS=6000 bash scripts/main.sh     a longer run (better reconstructions, lower LPS)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${VENV:-.venv}/bin/activate"

run=${RUN:-runs/main-$(date +%Y%m%d-%H%M%S)}
prior='gaussian'
echo "==> training an mmd autoencoder on shapes into $run"
sculpt train --data shapes --image-size 32 --objective mmd --kernel imq --independence 2 \
    --prior "$prior" --latent-dim 5 --width 16 --batch-size 256 --lr 1e-3 \
    --max-steps "${STEPS:-3600}" --out "$run"

echo "==> scoring the held-out latents (LPS-lgbm: lower is better, 0 = no dimension predicts another)"
sculpt eval "$run"
echo "==> exporting to the ONNX bundle $run-bundle"
sculpt export "$run" --out "$run-bundle"
sculpt inspect "$run-bundle"
echo "==> see $run/report/*.png, $run/metrics.jsonl, $run/summary.json and $run-bundle/"
if [ "${SERVE:-1}" != "0" ]; then
    echo "==> serving $run-bundle (Ctrl-C to stop)"
    exec sculpt serve "$run-bundle" --port "${PORT:-3000}" --grpc-port "${GRPC_PORT:-50051}"
fi
