"""The gRPC server inside the BentoML worker: a grpc.aio server on a thread of its own.

``sculpt serve`` runs BentoML workers (``SCULPT_WORKERS``) whose ``__init__``
(:mod:`sculptserve.serving.http.service`) starts :class:`GrpcThread` with the worker's
:class:`~sculptserve.serving.core.EmbeddingApp`, so REST and gRPC share the ONNX sessions, the
drift window and the metrics. The standalone server (``python -m
sculptserve.serving.grpc.server``) runs the same :func:`start_server` / :func:`stop_server`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sculptserve.serving.grpc.server import (
    READINESS_INTERVAL_S,
    STOP_REFUSE_MAX_S,
    bound_port,
    build_server,
    health_servicer,
    start_server,
    stop_server,
)

# the longest begin_drain() waits for the server's loop to flip health
_HEALTH_FLIP_TIMEOUT_S = 5.0


class GrpcThread:
    """A grpc.aio server on its own event loop in a daemon thread.

    The same lifecycle as the standalone server
    (:func:`sculptserve.serving.grpc.server.start_server` and
    :func:`~sculptserve.serving.grpc.server.stop_server`): health follows the app's readiness while
    it runs; :meth:`stop` flips health to NOT_SERVING first, then drains in-flight calls within the
    grace period. The HTTP worker's shutdown drain (:mod:`sculptserve.serving.http.shutdown`)
    calls :meth:`begin_drain` first, on SIGTERM, and :meth:`stop` once HTTP stops accepting too.
    ``api_key``: see :func:`~sculptserve.serving.grpc.server.build_server`.
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
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop_lock = threading.Lock()
        self._stop_grace: float | None = None  # the grace of the stop under way
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

    def begin_drain(self) -> None:
        """Health NOT_SERVING now and for good (Check and Watch), while calls are still
        served: clients that watch health move away before :meth:`stop` refuses calls."""
        if not self._thread.is_alive():
            return
        flip = health_servicer(self._server).enter_graceful_shutdown()
        asyncio.run_coroutine_threadsafe(flip, self._loop).result(_HEALTH_FLIP_TIMEOUT_S)

    def stop(self, grace: float = 2.0) -> None:
        """Health NOT_SERVING, then stop accepting calls and give in-flight ones ``grace``
        seconds; end the thread. A second call (the drain, then the service's shutdown hook)
        waits for the first one's stop, with the first one's grace."""
        with self._stop_lock:
            if not self._thread.is_alive():
                return
            if self._stop_grace is None:
                self._stop_grace = grace
                # The coroutine is created on the server's own loop: grpc.aio binds to the
                # running loop.
                self._loop.call_soon_threadsafe(
                    lambda: self._loop.create_task(stop_server(self._server, grace))
                )
        self._thread.join(timeout=STOP_REFUSE_MAX_S + self._stop_grace + 5)
