"""`sculpt serve`: HTTP (BentoML) and gRPC from one process, one runtime, one drift monitor.

`sculpt serve BUNDLE` verifies the bundle, then runs `bentoml serve
sculptserve.serving.http.service:SculptService` with SCULPT_BUNDLE, SCULPT_GRPC_PORT and
SCULPT_GRPC_HOST set (the other SCULPT_* settings pass through from the environment; see
sculptserve.serving.settings). The service's worker starts the grpc.aio server on a background
thread (:class:`~sculptserve.serving.grpc.thread.GrpcThread`) beside the HTTP app, sharing its
:class:`~sculptserve.serving.core.EmbeddingApp` — so REST and gRPC traffic go through the same ONNX
sessions, validation and drift window, and show in the same /metrics. `bentoml serve
sculptserve.serving.http.service:SculptService` without SCULPT_GRPC_PORT serves HTTP alone.

Stopping: SIGTERM or Ctrl-C goes to BentoML's arbiter, which passes one SIGTERM to its worker;
the worker drains (:mod:`sculptserve.serving.http.shutdown`: not ready at once, serves on for
SCULPT_SHUTDOWN_DELAY_S, then finishes in-flight requests within SCULPT_SHUTDOWN_GRACE_S).
The arbiter passes on no second signal, and its workers run in sessions of their own (a
terminal's Ctrl-C does not reach them), so a second Ctrl-C is sent to the workers from here:
they stop at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

import psutil

from sculptserve.serving.settings import load_settings


def example_calls(port: int, grpc_port: int, modality: str, shape: list[int]) -> str:
    """Copy-pasteable calls for a newcomer."""
    zeros = "0.0"
    for size in reversed(shape):  # a Python expression for one all-zero example
        zeros = f"[{zeros}]*{size}"
    body = f"""$(python -c 'import json; print(json.dumps({{"inputs": [{zeros}]}}))')"""
    png = ", or base64 PNG strings" if modality == "image" else ""
    return f"""
Try it (another terminal):
  curl -s localhost:{port}/readyz
  curl -s -X POST localhost:{port}/info -H 'content-type: application/json' -d '{{}}'
  curl -s -X POST localhost:{port}/generate -H 'content-type: application/json' \\
       -d '{{"n": 2, "seed": 0}}' | head -c 300; echo
  curl -s -X POST localhost:{port}/embed -H 'content-type: application/json' \\
       -d "{body}"
  curl -s -X POST localhost:{port}/drift -H 'content-type: application/json' -d '{{}}'
  curl -s localhost:{port}/metrics | grep sculpt_
  (inputs: nested lists shaped {shape} ({modality}){png})
gRPC on port {grpc_port} (health, reflection, sculpt.v1.Sculpt, the Open Inference Protocol's
inference.GRPCInferenceService: tritonclient.grpc works with it):
  grpcurl -plaintext localhost:{grpc_port} list
  grpcurl -plaintext -d '{{}}' localhost:{grpc_port} sculpt.v1.Sculpt/GetInfo
  grpcurl -plaintext localhost:{grpc_port} inference.GRPCInferenceService/ServerReady
  python -c 'import grpc; \\
from sculptserve.serving.grpc import sculpt_pb2 as pb, sculpt_pb2_grpc as rpc; \\
print(rpc.SculptStub(grpc.insecure_channel("localhost:{grpc_port}")).GetDrift(pb.GetDriftRequest()).state)'
"""


def interrupt_workers(arbiter_pid: int) -> None:
    """SIGINT to every process under the arbiter: BentoML's workers end their drain now."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in psutil.Process(arbiter_pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGINT)


def bentoml_serve_command(port: int, host: str) -> list[str]:
    """The `bentoml serve` command line for the sculpt service (HTTP)."""
    return [
        sys.executable, "-m", "bentoml", "serve", "sculptserve.serving.http.service:SculptService",
        "--port", str(port), "--host", host,
    ]  # fmt: skip


def run_serve(
    bundle: str,
    *,
    port: int = 3000,
    grpc_port: int = 50051,
    host: str = "127.0.0.1",
    expect_digest: str | None = None,
    verify_key: str | None = None,
) -> int:
    """Verify ``bundle``, then run the BentoML server (HTTP + gRPC) until interrupted.

    ``expect_digest`` / ``verify_key`` (``--expect-digest`` / ``--verify-key``) override
    SCULPT_BUNDLE_DIGEST / SCULPT_BUNDLE_VERIFY_KEY; the workers check the same again.
    """
    from sculptserve.bundle.load import load_bundle

    trust = {"bundle_digest": expect_digest, "bundle_verify_key": verify_key}
    # an invalid SCULPT_* value fails here, in one line
    settings = load_settings(**{k: v for k, v in trust.items() if v is not None})
    # fail fast, one readable line, before starting
    loaded = load_bundle(
        bundle, expect_digest=settings.bundle_digest, verify_key=settings.verify_key()
    )
    manifest = loaded.manifest
    env = {
        **os.environ,
        **settings.child_env(
            bundle=bundle,
            grpc_port=grpc_port,
            grpc_host=host,
            bundle_digest=settings.bundle_digest,
            bundle_verify_key=settings.bundle_verify_key,
        ),
    }
    command = bentoml_serve_command(port, host)
    print(
        f"serving {manifest.name}:{manifest.version} ({loaded.digest}) — HTTP {host}:{port}, "
        f"gRPC {host}:{grpc_port}"
    )
    print(example_calls(port, grpc_port, manifest.input.modality, manifest.input.shape))
    child = subprocess.Popen(command, env=env)
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        child.send_signal(signum)
        if stopping and signum == signal.SIGINT:  # Ctrl-C after a first stop signal
            interrupt_workers(child.pid)
        stopping = True

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
