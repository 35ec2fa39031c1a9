"""The gRPC server: `sculpt.v1.Sculpt` and the Open Inference Protocol over :class:`EmbeddingApp`.

BentoML's new service API has no gRPC, so this is a plain ``grpc.aio`` server run from the same
:class:`~sculptserve.serving.core.EmbeddingApp` as REST: same runtime, validation, limits, drift
monitor and metrics. On one port it serves `sculpt.v1.Sculpt` (this module's
:class:`SculptServicer`), ``inference.GRPCInferenceService`` (the Open Inference Protocol, KServe
v2: :mod:`sculptserve.serving.grpc.inference`), ``grpc.health.v1.Health`` and server reflection.
The API key guards `sculpt.v1.Sculpt` and the inference service except its health RPCs
(ServerLive, ServerReady, ModelReady); those, health and reflection stay open (probes and grpcurl
need no secret). Every call of every service is counted and timed in the grpc-prometheus
convention (``grpc_server_*``, :mod:`sculptserve.serving.grpc.metrics`) on the app's registry.

The app returns arrays (:class:`~sculptserve.serving.core.EmbedResult` & co.); this module puts
them into ``Tensor`` messages (and PNG files into ``bytes``) without a detour through lists.

Lifecycle (one for the standalone server and the in-worker
:class:`~sculptserve.serving.grpc.thread.GrpcThread`): :func:`start_server` starts the server and a
task that keeps ``grpc.health.v1`` in step with :meth:`EmbeddingApp.ready` (the check REST's /readyz
uses: NOT_SERVING while it would fail, SERVING while it passes; a ``Check`` also refreshes it);
:func:`stop_server` first flips health to NOT_SERVING for good (``enter_graceful_shutdown``), so
balancers stop sending, then answers new calls UNAVAILABLE itself until they stop coming (see
:class:`_ShutdownGate`), then stops accepting calls and gives the in-flight ones a grace period to
finish.

Errors (:mod:`sculptserve.serving.grpc.errors`): a
:class:`~sculptserve.serving.errors.PayloadError` is ``INVALID_ARGUMENT`` with its message (an
unknown Open Inference Protocol model ``NOT_FOUND``); a message over
``ServiceLimits.max_body_bytes`` is ``RESOURCE_EXHAUSTED`` (gRPC's own receive limit); so is a
request whose response would exceed ``ServiceLimits.max_grpc_response_bytes``
(SCULPT_GRPC_RESPONSE_MAX_BYTES, by default under a default client's 4 MiB receive limit),
refused before the model runs with a message naming the limit and how many items fit; a missing
or wrong key is ``UNAUTHENTICATED``. Each of these client errors is one INFO log line (RPC,
peer, status, message), never a traceback: clients cannot flood the log. Anything else is logged
with its traceback and answered with a generic ``INTERNAL``, and the server keeps serving.

Run: ``python -m sculptserve.serving.grpc.server --bundle PATH [--host H] [--port N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hmac
import json
import logging
import math
import signal
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.encodings import ENCODINGS, png_max_bytes
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.grpc import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as pb_grpc
from sculptserve.serving.grpc.errors import (
    ResponseBudget,
    ResponseTooLarge,
    guarded,
    log_client_error,
)
from sculptserve.serving.grpc.inference import HEALTH_METHODS, InferenceServicer
from sculptserve.serving.grpc.inference import SERVICE_NAME as INFERENCE_SERVICE_NAME
from sculptserve.serving.grpc.metrics import GrpcServerMetrics, MetricsInterceptor
from sculptserve.serving.oip import tensor_bytes
from sculptserve.serving.settings import load_settings

__all__ = [
    "DEFAULT_PORT",
    "INFERENCE_SERVICE_NAME",
    "READINESS_INTERVAL_S",
    "SERVICE_NAME",
    "ResponseTooLarge",
    "bound_port",
    "build_server",
    "health_servicer",
    "serve",
    "start_server",
    "stop_server",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 50051
READINESS_INTERVAL_S = 1.0  # how often a running server re-reads the app's readiness
# stop_server's refusal phase: over once no call came for QUIET_S, or after MAX_S at most
STOP_QUIET_S = 0.5
STOP_REFUSE_MAX_S = 3.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Sculpt"].full_name  # "sculpt.v1.Sculpt"
# Every service this server registers, for the metrics (created at zero for each method).
_SERVICES = (
    pb.DESCRIPTOR.services_by_name["Sculpt"],
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
# The services behind the API key and the shutdown gate, less their health RPCs (open to
# probes, and answered while the server drains).
_PROTECTED_SERVICES = (SERVICE_NAME, INFERENCE_SERVICE_NAME)
_OPEN_METHODS = frozenset(f"/{INFERENCE_SERVICE_NAME}/{name}" for name in HEALTH_METHODS)


def _protected(method: str) -> bool:
    """Whether ``/package.Service/Method`` needs the API key and closes at shutdown."""
    service = method[1:].rpartition("/")[0]
    return service in _PROTECTED_SERVICES and method not in _OPEN_METHODS


_INPUT_DTYPES = ("", "float32")  # Tensor.dtype values accepted for inputs ("" = default)
_PNG_ITEM_FRAMING_BYTES = 16  # one `repeated bytes png` entry: tag + length varint

# --- proto <-> numpy ---------------------------------------------------------------------------


def to_tensor(arr: np.ndarray, dtype: str | None = None) -> pb.Tensor:
    """A numpy array as a little-endian row-major Tensor (dtype name defaults to the array's)."""
    arr = np.asarray(arr)
    return pb.Tensor(shape=arr.shape, data=bytes(tensor_bytes(arr)), dtype=dtype or arr.dtype.name)


def _tensor_items(t: pb.Tensor) -> list[np.ndarray]:
    """An input batch Tensor [B, *example] -> B example arrays (views, no copy)."""
    if t.dtype not in _INPUT_DTYPES:
        raise PayloadError(f"inputs.tensor.dtype {t.dtype!r} is not supported; use 'float32'")
    shape = [int(d) for d in t.shape]
    if len(shape) < 2:
        raise PayloadError(
            f"inputs.tensor.shape is {shape}; expected [B, *example shape] with a batch axis"
        )
    if shape[0] < 0 or any(d < 1 for d in shape[1:]):
        # a zero-size example would let a tiny message claim a huge batch: [10**12, 0]
        raise PayloadError(
            f"inputs.tensor.shape {shape}: the batch size must be >= 0 and every example "
            "dimension >= 1"
        )
    needed = math.prod(shape) * 4  # Python ints: no overflow for absurd shapes
    if len(t.data) != needed:
        raise PayloadError(
            f"inputs.tensor.data holds {len(t.data)} bytes but shape {shape} of float32 "
            f"needs {needed}"
        )
    arr = np.frombuffer(t.data, dtype="<f4").reshape(shape)
    return list(arr)  # B = 0 gives [], which decode_inputs reports as an empty batch


def _inputs(msg: pb.Inputs) -> list[Any]:
    """The request's inputs as items for :func:`sculptserve.serving.inputs.decode_inputs`."""
    has_tensor = msg.HasField("tensor")
    if has_tensor and msg.images:
        raise PayloadError("inputs: set either inputs.tensor or inputs.images, not both")
    if has_tensor:
        return _tensor_items(msg.tensor)
    if not msg.images:
        raise PayloadError("inputs is empty: set inputs.tensor or inputs.images")
    return list(msg.images)  # bytes items are PNG/JPEG files to the codec


# --- the service -------------------------------------------------------------------------------


class SculptServicer(pb_grpc.SculptServicer):
    """Translates `sculpt.v1` messages to :class:`EmbeddingApp` calls and back.

    The app's calls block (ONNX Runtime, PNG coding), so they run in worker threads and the
    event loop stays free for other requests, health checks and cancellations.
    """

    def __init__(self, app: EmbeddingApp) -> None:
        self.app = app
        self._budget = ResponseBudget(app.limits.max_grpc_response_bytes)
        self._latent_bytes = 4 * app.runtime.latent_dim  # one float32 latent vector
        self._output_bytes = 4 * math.prod(app.runtime.input_shape)  # one float32 model output
        image = app.spec.modality == "image" and len(app.runtime.input_shape) == 3
        # output -> wire bytes of one decoded sample; "png" only for image models (the app
        # refuses it for others)
        self._sample_bytes = {"array": self._output_bytes}
        if image:
            self._sample_bytes["png"] = (
                png_max_bytes(app.runtime.input_shape) + _PNG_ITEM_FRAMING_BYTES
            )

    @guarded
    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        encoding = request.encoding or "float32"
        items = _inputs(request.inputs)
        if encoding in ENCODINGS:  # an unknown one is the app's to refuse
            code_bytes = self.app.runtime.latent_dim * ENCODINGS[encoding].dtype.itemsize
            self._budget.check("Embed", len(items), code_bytes, "inputs")
        result = await asyncio.to_thread(self.app.embed, items, encoding)
        return pb.EmbedResponse(
            embeddings=to_tensor(result.embeddings, result.encoding), encoding=result.encoding
        )

    @guarded
    async def Reconstruct(
        self, request: pb.ReconstructRequest, context: Any
    ) -> pb.ReconstructResponse:
        items = _inputs(request.inputs)
        self._budget.check("Reconstruct", len(items), self._output_bytes, "inputs")
        result = await asyncio.to_thread(self.app.reconstruct, items)
        return pb.ReconstructResponse(outputs=to_tensor(result.outputs, "float32"))

    @guarded
    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        output = request.output or "array"
        fixed = dict(request.fixed) or None
        if output in self._sample_bytes:  # another output is the app's to refuse
            item_bytes = self._latent_bytes + self._sample_bytes[output]
            self._budget.check("Generate", int(request.n), item_bytes, "samples")
        result = await asyncio.to_thread(
            self.app.generate, int(request.n), int(request.seed), fixed, output
        )
        response = pb.GenerateResponse(
            latents=to_tensor(result.latents, "float32"), seed=result.seed
        )
        if result.png is not None:
            response.png.extend(result.png)
        else:
            response.samples.CopyFrom(to_tensor(result.samples, "float32"))
        return response

    @guarded
    async def GetInfo(self, request: pb.GetInfoRequest, context: Any) -> pb.GetInfoResponse:
        info = await asyncio.to_thread(self.app.info)
        return pb.GetInfoResponse(
            json=json.dumps(info, sort_keys=True),
            name=str(info["name"]),
            version=str(info["version"]),
            latent_dim=int(info["latent_dim"]),
            input_shape=[int(d) for d in info["input"]["shape"]],
            modality=str(info["input"]["modality"]),
        )

    @guarded
    async def GetDrift(self, request: pb.GetDriftRequest, context: Any) -> pb.GetDriftResponse:
        report = await asyncio.to_thread(self.app.drift)
        state = str(report["state"])
        return pb.GetDriftResponse(
            json=json.dumps(report, sort_keys=True), state=state, alert=state == "drift"
        )


# --- API key -----------------------------------------------------------------------------------


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Require ``authorization: Bearer <key>`` on `sculpt.v1.Sculpt` and
    ``inference.GRPCInferenceService``; other services and the inference service's health RPCs
    pass.

    Health (both kinds) and reflection stay open on purpose: load balancers and grpcurl probe
    them without secrets, and they reveal nothing a client could not read from the proto.
    """

    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode("utf-8")

    def authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key != "authorization":
                continue
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            # constant-time: the time taken must not reveal how much of the key matched
            ok = hmac.compare_digest(token.strip().encode("utf-8"), self._key)
            return scheme.lower() == "bearer" and ok
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if not _protected(method):
            return await continuation(handler_call_details)
        if self.authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        # every protected RPC is unary-unary, so a unary-unary deny handler fits all
        rpc = method.rsplit("/", 1)[-1]
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._reject, rpc))

    @staticmethod
    async def _reject(rpc: str, request: bytes, context: grpc.aio.ServicerContext) -> None:
        code = grpc.StatusCode.UNAUTHENTICATED
        message = "missing or wrong API key: send metadata 'authorization: Bearer <key>'"
        log_client_error(rpc, context.peer(), code, message)
        await context.abort(code, message)


# --- shutdown gate -------------------------------------------------------------------------------


class _ShutdownGate(grpc.aio.ServerInterceptor):
    """Once closed, answers every protected call (`sculpt.v1.Sculpt`, the inference service but
    its health RPCs) UNAVAILABLE itself.

    grpc's own shutdown (``server.stop``) cancels the calls that have reached the server but
    that its event loop has not picked up yet: under load their clients got CANCELLED, which
    does not say whether the call ran. :func:`stop_server` closes this gate first: new calls
    then get a deliberate UNAVAILABLE (safe to retry elsewhere) until none has come for a
    moment (:meth:`wait_quiet`), and only then does grpc's shutdown run. Health and reflection
    pass (health says NOT_SERVING by then, ServerReady false).
    """

    def __init__(self) -> None:
        self._closed = False
        self._last_refused = 0.0
        self._refuse = grpc.unary_unary_rpc_method_handler(self._unavailable)

    def close(self) -> None:
        self._closed = True
        self._last_refused = time.monotonic()

    async def wait_quiet(self, quiet_s: float, max_s: float) -> None:
        """Until no call was refused for ``quiet_s`` seconds (``max_s`` at most)."""
        deadline = time.monotonic() + max_s
        while (now := time.monotonic()) < deadline:
            left = self._last_refused + quiet_s - now
            if left <= 0:
                return
            await asyncio.sleep(min(left, deadline - now))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if not self._closed or not _protected(method):
            return await continuation(handler_call_details)
        self._last_refused = time.monotonic()
        return self._refuse  # every protected RPC is unary-unary, so one handler fits all

    @staticmethod
    async def _unavailable(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
        )


# --- server ------------------------------------------------------------------------------------


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _HealthServicer(health.aio.HealthServicer):
    """The stock async health servicer, following ``ready()`` for ``services``.

    Statuses are settable before the loop runs (build time); :meth:`refresh` re-reads
    ``ready()`` (every ``Check`` does, and the task of :func:`start_server` periodically, so
    ``Watch`` streams see changes). After ``enter_graceful_shutdown`` every service stays
    NOT_SERVING (the stock servicer ignores later ``set`` calls).
    """

    def __init__(self, services: Sequence[str], ready: Callable[[], bool]) -> None:
        super().__init__()
        self._services = tuple(services)
        self._ready = ready
        status = _SERVING if self._read_ready() else _NOT_SERVING
        for service in self._services:
            # no watcher can exist yet, so a plain write is what the async set() would do
            self._server_status[service] = status

    def _read_ready(self) -> bool:
        try:
            return bool(self._ready())
        except Exception:  # a failing readiness check means not ready, never a crash
            log.exception("the readiness check failed")
            return False

    @property
    def shutting_down(self) -> bool:
        return self._gracefully_shutting_down

    def serving(self) -> bool:
        """Whether the server serves now: ``ready()`` passes and no shutdown drain began (the
        Open Inference Protocol's ServerReady)."""
        return not self.shutting_down and self._read_ready()

    async def refresh(self) -> None:
        """Set every service to SERVING or NOT_SERVING as ``ready()`` says now."""
        status = _SERVING if self._read_ready() else _NOT_SERVING
        for service in self._services:
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)


@dataclass
class _Bound:
    port: int
    address: str
    health: _HealthServicer
    gate: _ShutdownGate
    watcher: asyncio.Task[None] | None = field(default=None)


_BOUND: weakref.WeakKeyDictionary[grpc.aio.Server, _Bound] = weakref.WeakKeyDictionary()


def build_server(
    app: EmbeddingApp,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    api_key: str | None = None,
) -> grpc.aio.Server:
    """A ready-to-start server for ``app`` on ``host:port`` (port 0: any free port).

    ``api_key``: required as ``authorization: Bearer KEY`` on `sculpt.v1.Sculpt` and
    inference service calls (see :class:`ApiKeyInterceptor`); None or empty leaves the API open
    (the entry points pass ``Settings.api_key``). The ``grpc_server_*`` metrics go to
    ``app.metrics_registry`` (prometheus_client's default registry unless the app was given
    another). Health starts
    as ``app.ready()`` says (the app is loaded and verified already, so normally SERVING).
    The bound port is :func:`bound_port` (``server.add_insecure_port`` already ran). Start it
    with :func:`start_server` and stop it with :func:`stop_server` for health to follow
    readiness and the graceful shutdown.
    """
    gate = _ShutdownGate()
    # The metrics first (outermost): they count the calls the gate and the key check refuse.
    metrics = GrpcServerMetrics(app.metrics_registry, _SERVICES)
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics), gate]
    if api_key:
        interceptors.append(ApiKeyInterceptor(api_key))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            # gRPC answers RESOURCE_EXHAUSTED itself for a larger request, before decoding it
            ("grpc.max_receive_message_length", int(app.limits.max_body_bytes)),
            # a backstop only: the servicer refuses such requests before the model runs
            ("grpc.max_send_message_length", int(app.limits.max_grpc_response_bytes)),
        ],
    )
    pb_grpc.add_SculptServicer_to_server(SculptServicer(app), server)
    health_servicer = _HealthServicer(
        services=("", SERVICE_NAME, INFERENCE_SERVICE_NAME), ready=app.ready
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(app, ready=health_servicer.serving), server
    )
    reflection.enable_server_reflection(
        (SERVICE_NAME, INFERENCE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    if bound == 0:  # grpc returns 0 instead of raising when it cannot bind
        raise OSError(f"cannot bind the gRPC server to {address}")
    _BOUND[server] = _Bound(
        port=bound, address=address.rsplit(":", 1)[0], health=health_servicer, gate=gate
    )
    return server


def bound_port(server: grpc.aio.Server) -> int:
    """The port a :func:`build_server` server listens on (useful with port 0)."""
    return _BOUND[server].port


def health_servicer(server: grpc.aio.Server) -> _HealthServicer:
    """The health servicer of a :func:`build_server` server."""
    return _BOUND[server].health


async def _follow_readiness(servicer: _HealthServicer, interval_s: float) -> None:
    while not servicer.shutting_down:
        await servicer.refresh()
        await asyncio.sleep(interval_s)


async def start_server(
    server: grpc.aio.Server, *, readiness_interval_s: float = READINESS_INTERVAL_S
) -> None:
    """Start ``server`` and keep its health in step with the app's readiness."""
    bound = _BOUND[server]
    await server.start()
    bound.watcher = asyncio.get_running_loop().create_task(
        _follow_readiness(bound.health, readiness_interval_s), name="sculpt-grpc-readiness"
    )
    log.info("gRPC %s listening on %s:%d", SERVICE_NAME, bound.address, bound.port)


async def stop_server(server: grpc.aio.Server, grace_s: float | None = 5.0) -> None:
    """The graceful shutdown: health turns NOT_SERVING for good first (balancers and probes
    stop sending); new calls are answered UNAVAILABLE until they stop coming (at most
    :data:`STOP_REFUSE_MAX_S`); then the server refuses new calls and in-flight ones get
    ``grace_s`` seconds to finish before they are cancelled."""
    bound = _BOUND[server]
    await bound.health.enter_graceful_shutdown()
    if bound.watcher is not None:
        bound.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bound.watcher
    bound.gate.close()
    await bound.gate.wait_quiet(STOP_QUIET_S, STOP_REFUSE_MAX_S)
    await server.stop(grace_s)


async def serve(
    app: EmbeddingApp,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    api_key: str | None = None,
    *,
    stop: asyncio.Event | None = None,
    grace_s: float = 5.0,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until ``stop`` is set (or the server terminates); the app stays open.

    ``on_ready(port)`` runs once the server listens. On stop: :func:`stop_server`.
    """
    server = build_server(app, port=port, host=host, api_key=api_key)
    await start_server(server)
    if on_ready is not None:
        on_ready(bound_port(server))
    try:
        if stop is None:
            await server.wait_for_termination()
        else:
            await stop.wait()
    finally:
        await stop_server(server, grace_s)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sculptserve.serving.grpc.server",
        description=f"Serve a bundle over gRPC ({SERVICE_NAME}, health, reflection).",
    )
    parser.add_argument("--bundle", help="bundle folder or BentoML tag (default: SCULPT_BUNDLE)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (%(default)s)"
    )
    return parser.parse_args(argv)


async def _run(app: EmbeddingApp, host: str, port: int, api_key: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(bound: int) -> None:
        # one parseable line: scripts and tests wait for it (and read the port when --port 0)
        print(f"sculpt gRPC listening on {host}:{bound}", flush=True)

    await serve(app, port=port, host=host, api_key=api_key, stop=stop, on_ready=ready)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: load the bundle, serve until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()  # SCULPT_BUNDLE, SCULPT_API_KEY, limits, runtime, ...
        app = EmbeddingApp.from_settings(settings, args.bundle)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(app, args.host, args.port, settings.api_key))
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
