#!/usr/bin/env bash
# Regenerate the committed gRPC stubs from sculptserve/serving/grpc/sculpt.proto.
#
# Run from anywhere; needs grpcio-tools (a dev dependency: serving installs use the committed
# stubs). `-I .` from the repo root makes the generated imports package-qualified
# (`from sculptserve.serving.grpc import sculpt_pb2`), so the stubs import as part of the package.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
"$PYTHON" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  sculptserve/serving/grpc/sculpt.proto
echo "generated: sculptserve/serving/grpc/sculpt_pb2.py sculpt_pb2.pyi sculpt_pb2_grpc.py"
