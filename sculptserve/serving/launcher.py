"""`sculpt serve`: HTTP (BentoML) and gRPC from one process, one runtime, one drift monitor.

`sculpt serve BUNDLE` verifies the bundle, then runs `bentoml serve
sculptserve.serving.http.service:SculptService` with SCULPT_BUNDLE, SCULPT_GRPC_PORT and
SCULPT_GRPC_HOST set (the other SCULPT_* settings pass through from the environment; see
sculptserve.serving.settings). The service's worker starts the grpc.aio server on a background
thread (:class:`GrpcThread`) beside the HTTP app, sharing its
:class:`~sculptserve.serving.core.EmbeddingApp` — so REST and gRPC traffic go through the same ONNX
sessions, validation and drift window, and show in the same /metrics. `bentoml serve
sculptserve.serving.http.service:SculptService` without SCULPT_GRPC_PORT serves HTTP alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from sculptserve.serving.settings import load_settings


class GrpcThread:
    """A grpc.aio server on its own event loop in a daemon thread.

    The same lifecycle as the standalone server
    (:func:`sculptserve.serving.grpc.server.start_server` and
    :func:`~sculptserve.serving.grpc.server.stop_server`): health follows the app's readiness while
    it runs; :meth:`stop` flips health to NOT_SERVING first, then drains in-flight calls within the
    grace period. ``api_key``: see :func:`~sculptserve.serving.grpc.server.build_server`.
    """

    def __init__(
        self,
        app: Any,
        port: int,
        host: str = "127.0.0.1",
        api_key: str | None = None,
        *,
        readiness_interval_s: float | None = None,
    ) -> None:
        from sculptserve.serving.grpc.server import (
            READINESS_INTERVAL_S,
            bound_port,
            build_server,
            start_server,
        )

        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = port
        interval = READINESS_INTERVAL_S if readiness_interval_s is None else readiness_interval_s

        async def start() -> Any:
            server = build_server(app, port=port, host=host, api_key=api_key)
            await start_server(server, readiness_interval_s=interval)
            self.port = bound_port(server)
            return server

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(start())
            except BaseException as exc:  # reported to the starting thread below
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            self._loop.run_until_complete(self._server.wait_for_termination())

        self._thread = threading.Thread(target=run, name="sculpt-grpc", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise RuntimeError(f"gRPC server could not start on port {port}: {self._error}")

    def stop(self, grace: float = 2.0) -> None:
        """Health NOT_SERVING, then stop accepting calls and give in-flight ones ``grace``
        seconds; end the thread."""
        if not self._thread.is_alive():
            return
        from sculptserve.serving.grpc.server import stop_server

        # The coroutine is created on the server's own loop: grpc.aio binds to the running loop.
        self._loop.call_soon_threadsafe(
            lambda: self._loop.create_task(stop_server(self._server, grace))
        )
        self._thread.join(timeout=grace + 5)


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
gRPC on port {grpc_port} (health, reflection, sculpt.v1.Sculpt):
  grpcurl -plaintext localhost:{grpc_port} list
  grpcurl -plaintext -d '{{}}' localhost:{grpc_port} sculpt.v1.Sculpt/GetInfo
  python -c 'import grpc; \\
from sculptserve.serving.grpc import sculpt_pb2 as pb, sculpt_pb2_grpc as rpc; \\
print(rpc.SculptStub(grpc.insecure_channel("localhost:{grpc_port}")).GetDrift(pb.GetDriftRequest()).state)'
"""


def bentoml_serve_command(port: int, host: str) -> list[str]:
    """The `bentoml serve` command line for the sculpt service (HTTP)."""
    return [
        sys.executable, "-m", "bentoml", "serve", "sculptserve.serving.http.service:SculptService",
        "--port", str(port), "--host", host,
    ]  # fmt: skip


def run_serve(
    bundle: str, *, port: int = 3000, grpc_port: int = 50051, host: str = "127.0.0.1"
) -> int:
    """Verify ``bundle``, then run the BentoML server (HTTP + gRPC) until interrupted."""
    from sculptserve.bundle.load import load_bundle

    manifest = load_bundle(bundle).manifest  # fail fast, one readable line, before starting
    settings = load_settings()  # an invalid SCULPT_* value fails here, in one line
    env = {
        **os.environ,
        **settings.child_env(bundle=bundle, grpc_port=grpc_port, grpc_host=host),
    }
    command = bentoml_serve_command(port, host)
    print(
        f"serving {manifest.name}:{manifest.version} — HTTP {host}:{port}, gRPC {host}:{grpc_port}"
    )
    print(example_calls(port, grpc_port, manifest.input.modality, manifest.input.shape))
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
