"""gRPC server metrics in the grpc-prometheus convention, for every service and method served.

The names and labels of go-grpc-prometheus (the convention dashboards and alerts for gRPC
services are written against):

- ``grpc_server_started_total{grpc_type, grpc_service, grpc_method}``: calls started;
- ``grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}``: calls
  finished, by status code in Go's spelling (``OK``, ``InvalidArgument``, ``Unauthenticated``,
  ``Canceled``...: :data:`CODE_NAMES`);
- ``grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}``: a histogram of the
  time from the call's start to its status, with Prometheus' default buckets (0.005 to 10 s).

``grpc_type`` is ``unary``, ``client_stream``, ``server_stream`` or ``bidi_stream``;
``grpc_service`` the full service name (``inference.GRPCInferenceService``). As
go-grpc-prometheus does, every series of every method served is created at zero when the
server is built (each status code too), so ``rate()`` and ``increase()`` see a call's first
error, and labels only ever take the values of registered methods (a client cannot create
series by calling made-up methods).

:class:`MetricsInterceptor` is the server's outermost interceptor, so calls refused by the API
key check (``Unauthenticated``) or the shutdown gate (``Unavailable``) are counted too. The
status of a call is what the client receives: ``context.abort``'s code, a code set with
``set_code``, ``Unknown`` for an exception grpc turns into UNKNOWN, ``Canceled`` or
``DeadlineExceeded`` when the call was cancelled.

The metrics go to the app's registry (``prometheus_client``'s default one in the service), so
/metrics shows them; under ``PROMETHEUS_MULTIPROC_DIR`` (BentoML workers) they are summed across
processes like the drift monitor's counters. As in :mod:`sculptserve.serving.drift`, metric
objects are created once per (registry, name) (:func:`sculptserve.serving.metrics.registered`),
so several servers may share one registry (their counts add up).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram

from sculptserve.serving.metrics import registered

__all__ = [
    "BUCKETS",
    "CODE_NAMES",
    "HANDLED",
    "HANDLING_SECONDS",
    "STARTED",
    "GrpcServerMetrics",
    "MetricsInterceptor",
]

STARTED = "grpc_server_started_total"
HANDLED = "grpc_server_handled_total"
HANDLING_SECONDS = "grpc_server_handling_seconds"  # a histogram: _bucket, _sum, _count

# Go's codes.Code.String(), the grpc_code values of the convention.
CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
# Prometheus' default buckets (Go's DefBuckets), as go-grpc-prometheus uses.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# (request streaming, response streaming) -> grpc_type
_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}
# (request streaming, response streaming) -> the handler's behavior attribute and its factory
_HANDLERS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}
_METHOD_LABELS = ("grpc_type", "grpc_service", "grpc_method")


def _metrics(registry: CollectorRegistry) -> tuple[Any, Any, Any]:
    """(started, handled, handling seconds) on ``registry``, created once."""
    started = registered(
        registry,
        STARTED,
        lambda: Counter(
            STARTED,
            "Total number of RPCs started on the server.",
            _METHOD_LABELS,
            registry=registry,
        ),
    )
    handled = registered(
        registry,
        HANDLED,
        lambda: Counter(
            HANDLED,
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_METHOD_LABELS, "grpc_code"),
            registry=registry,
        ),
    )
    seconds = registered(
        registry,
        HANDLING_SECONDS,
        lambda: Histogram(
            HANDLING_SECONDS,
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            _METHOD_LABELS,
            registry=registry,
            buckets=BUCKETS,
        ),
    )
    return started, handled, seconds


@dataclass(frozen=True)
class _Method:
    """The label-bound children of one method."""

    started: Any
    handled: dict[grpc.StatusCode, Any]
    seconds: Any

    def finish(self, code: grpc.StatusCode, seconds: float) -> None:
        self.handled[code].inc()
        self.seconds.observe(seconds)


class GrpcServerMetrics:
    """The metrics of the methods of ``services``, created at zero on ``registry``."""

    def __init__(self, registry: CollectorRegistry, services: Iterable[ServiceDescriptor]) -> None:
        started, handled, seconds = _metrics(registry)
        self._methods: dict[str, _Method] = {}
        for service in services:
            for method in service.methods:
                kind = _TYPES[(method.client_streaming, method.server_streaming)]
                labels = (kind, service.full_name, method.name)
                self._methods[f"/{service.full_name}/{method.name}"] = _Method(
                    started=started.labels(*labels),
                    handled={
                        code: handled.labels(*labels, name) for code, name in CODE_NAMES.items()
                    },
                    seconds=seconds.labels(*labels),
                )

    def method(self, path: str) -> _Method | None:
        """The metrics of ``/package.Service/Method``; None for a method not served."""
        return self._methods.get(path)


def _status(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status the client gets for a call that returned (``exc`` None) or raised."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        left = context.time_remaining()
        expired = left is not None and left <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    code = context.code()  # abort()'s or set_code()'s; None when neither ran
    if code is None:
        return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _instrument(behavior: Callable[..., Any], method: _Method) -> Callable[..., Any] | None:
    """``behavior`` counted and timed, of the same kind (grpc.aio dispatches on whether it is
    a coroutine function or an async generator function); None for a sync behavior (this
    server registers none)."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            method.started.inc()
            start = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                method.finish(_status(context, exc), time.perf_counter() - start)
                raise
            method.finish(_status(context, None), time.perf_counter() - start)

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            method.started.inc()
            start = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                method.finish(_status(context, exc), time.perf_counter() - start)
                raise
            method.finish(_status(context, None), time.perf_counter() - start)
            return response

        return call
    return None


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call of a method ``metrics`` knows (the server's outermost
    interceptor, so it sees the handlers the inner ones substitute)."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = self._metrics.method(handler_call_details.method or "")
        if handler is None or method is None:
            return handler  # an unknown method: grpc answers UNIMPLEMENTED
        attribute, factory = _HANDLERS[(handler.request_streaming, handler.response_streaming)]
        behavior = _instrument(getattr(handler, attribute), method)
        if behavior is None:
            return handler
        return factory(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
