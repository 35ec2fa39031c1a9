#!/usr/bin/env bash
# Regenerate the committed gRPC stubs from the .proto files in sculptserve/serving/grpc/:
# sculpt.proto (`sculpt.v1.Sculpt`) and grpc_predict_v2.proto (the Open Inference Protocol's
# `inference.GRPCInferenceService`).
#
# Run from anywhere; needs grpcio-tools (a dev dependency: serving installs use the committed
# stubs). `-I .` from the repo root makes the generated imports package-qualified
# (`from sculptserve.serving.grpc import sculpt_pb2`), so the stubs import as part of the package.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
PROTOS=(sculptserve/serving/grpc/sculpt.proto sculptserve/serving/grpc/grpc_predict_v2.proto)
"$PYTHON" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  "${PROTOS[@]}"
for proto in "${PROTOS[@]}"; do
  stem="${proto%.proto}"
  echo "generated: ${stem}_pb2.py ${stem}_pb2.pyi ${stem}_pb2_grpc.py"
done
