"""The REST front end: a BentoML 1.4 service over :class:`sculptserve.serving.core.EmbeddingApp`.

Run with ``SCULPT_BUNDLE=BUNDLE_DIR_OR_TAG bentoml serve
sculptserve.serving.http.service:SculptService`` (or ``sculpt serve``). All logic lives in
``EmbeddingApp``; this package only translates HTTP: the app returns arrays and
:mod:`~sculptserve.serving.http.api` turns them into JSON (lists, base64 PNGs). This module
holds the BentoML service: the worker's lifecycle and the wiring. Settings come from
:func:`sculptserve.serving.settings.load_settings` (the worker's ``__init__`` reads them once and
passes them down). No torch is imported anywhere on this path.

Routes and errors
-----------------
``POST /embed``, ``/reconstruct``, ``/generate``, ``/embed/files`` (multipart images) and
``GET``/``POST`` ``/info`` and ``/drift`` are answered by :class:`~sculptserve.serving.http.api.
RestApi`, which :class:`~sculptserve.serving.http.api.RestFront` (an ASGI middleware) puts in
front of BentoML's router; ``/docs.json`` is its OpenAPI document, generated from the
bundle's :class:`~sculptserve.serving.http.contract.Contract`. Why BentoML's own handler is not
used for them is in :mod:`sculptserve.serving.http.api` (parsing on the event loop, type
coercion, list-wrapped 400s, a traceback per client error). The ``@bentoml.api`` methods below
remain for BentoML's ``/schema.json`` (``bentoml.SyncHTTPClient`` builds its methods from it)
and for in-process calls. ``/livez``, ``/readyz`` and ``/metrics`` are BentoML's. Every error
body is ``{"error": ..., "error_type": ...}``: 400 (invalid JSON or form, schema violation,
unusable input, float32 overflow), 401 and 413 from :mod:`sculptserve.serving.http.guard`,
405, 415, and 500 for bugs (logged with the traceback; client errors are one INFO line).

Threads and batching
--------------------
Requests run in worker threads behind a capacity limiter of ``SCULPT_API_THREADS`` (default
:data:`DEFAULT_API_THREADS`), the REST handlers' and BentoML's (``threads`` in the service
config, read when this module is imported, because BentoML takes it from the decorator).
BentoML's default of 1 serialized every sync request of a worker: a /drift or /info probe
waited behind every queued /embed, and no two requests could meet in a batch. With
``SCULPT_MICROBATCH=on`` concurrent ``/embed`` requests (REST and gRPC) meet in the app's
:class:`~sculptserve.serving.batching.MicroBatcher` and share ONNX Runtime calls
(``SCULPT_MICROBATCH_MAX_ROWS``, ``SCULPT_MICROBATCH_MAX_WAIT_MS``); it is off by default because
on CPU it measured no consistent gain (see :mod:`sculptserve.serving.batching`). BentoML's own
``batchable=True`` does not fit: it takes a single batched argument, ``embed`` has options
(``encoding``), calling an internal batchable API from a plain one goes through BentoML's
self-proxy (another HTTP hop with serialization), and gRPC could not share it.

Per-process settings
--------------------
``OPENBLAS_NUM_THREADS=1`` is passed to the workers (BentoML ``envs``; a value already in the
environment wins): numpy only meets small matrices here (the drift window's scoring), and an
OpenBLAS pool's threads busy-wait after each call, which took about 2 ms of CPU per request
from the request threads on a 2-core machine (benchmarks/RESULTS.md). The ``@bentoml.api``
methods declare ``application/json`` as their response media type, what the REST handlers
answer (BentoML's own handler would otherwise rebuild the output's JSON schema on every
response only to learn that; 14% of the worker's sampled Python time under load, when it
still served these routes).

Metrics
-------
The drift monitor's metrics (``sculpt_drift_*``, ``sculpt_embeddings_served_total``) go to
``prometheus_client``'s default registry, labelled ``worker=<BentoML worker index>``, as do the
core's (``sculpt_inference_duration_seconds``, ``sculpt_batch_rows``, ``sculpt_model_info``:
:mod:`sculptserve.serving.metrics`) and the gRPC server's. BentoML sets
``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported and builds ``/metrics`` with
a ``MultiProcessCollector``, so they appear there beside ``bentoml_service_*``, summed
(counters, histograms) or per process or by max (gauges) across workers; see
:mod:`sculptserve.serving.drift` and :mod:`sculptserve.serving.metrics`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument

from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.grpc.thread import GrpcThread
from sculptserve.serving.http.api import (
    RestApi,
    RestFront,
    embed_body,
    generate_body,
    jsonable,
    reconstruct_body,
)
from sculptserve.serving.http.guard import HttpGuard
from sculptserve.serving.http.shutdown import Drain, DrainingMiddleware
from sculptserve.serving.http.timeouts import BodyTimeout, install_header_timeout
from sculptserve.serving.settings import Settings, load_settings

log = logging.getLogger(__name__)

DEFAULT_API_THREADS: int = Settings.model_fields["api_threads"].default


def _worker_label() -> str:
    """BentoML's worker index for this process ("0" outside a BentoML server)."""
    index = bentoml.server_context.worker_index
    return str(index if index is not None else 0)


def _single_process_metrics() -> None:
    """Make BentoML's /metrics work when no multiprocess dir exists (in-process ASGI use).

    ``bentoml serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers and /metrics reads that
    dir. Without it (``to_asgi()`` in tests, or embedding the app elsewhere) BentoML's client
    still asks for a ``MultiProcessCollector`` and /metrics fails, so we switch it to the
    default registry, where the drift metrics live in that case. (BentoML has no public API
    for its metrics client, hence the two private imports.)
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.server.metrics.prometheus import PrometheusClient

    BentoMLContainer.metrics_client.set(PrometheusClient(multiproc=False))


@bentoml.service(
    name="sculpt",
    traffic={"timeout": 60},
    threads=load_settings().api_threads,
    workers=load_settings().workers,
    envs=[{"name": "OPENBLAS_NUM_THREADS", "value": "1", "stage": "runtime"}],
)
class SculptService:
    """Embeddings, reconstructions and prior samples of one verified bundle."""

    def __init__(self) -> None:
        self._app: EmbeddingApp | None = None
        self._grpc: GrpcThread | None = None
        self.rest: RestApi | None = None
        self._drain: Drain | None = None
        _single_process_metrics()
        settings = load_settings()  # every SCULPT_* variable, read and validated once
        # The bundle (SCULPT_BUNDLE: a folder or a BentoML tag) is verified (hashes, manifest,
        # ONNX graphs); the settings give the runtime, limits, micro-batcher and drift switch.
        self._app = EmbeddingApp.from_settings(settings, metric_labels={"worker": _worker_label()})
        log.info("bundle %s loaded", self._app.bundle.path)
        # The REST routes' handlers and their contract (request models, /docs.json).
        self.rest = RestApi(
            self._app,
            threads=settings.api_threads,
            auth=bool(settings.api_key),
            ready=self.__is_ready__,  # the protocol's /v2/health/ready, like /readyz
        )
        # `sculpt serve` sets SCULPT_GRPC_PORT: gRPC then runs in this process beside HTTP and
        # shares this app (runtime, validation, drift window, metrics) and its API key.
        if settings.grpc_port is not None:
            self._grpc = GrpcThread(
                self._app, settings.grpc_port, settings.grpc_host, api_key=settings.api_key
            )
            log.info("gRPC listening on %s:%s", settings.grpc_host, self._grpc.port)
        # In a uvicorn worker (`bentoml serve`): SIGTERM drains (readiness first, see
        # sculptserve.serving.http.shutdown) and slow clients' headers get a deadline.
        self._drain = Drain(
            delay_s=settings.shutdown_delay_s,
            grace_s=settings.shutdown_grace_s,
            on_start=self._grpc.begin_drain if self._grpc else None,
            on_stop=self._grpc.stop if self._grpc else None,
        )
        self._drain.install()
        install_header_timeout(settings.http_header_timeout_s)

    @property
    def app(self) -> EmbeddingApp:
        if self._app is None:  # only reachable if __init__ failed half-way
            raise RuntimeError("the bundle is not loaded")
        return self._app

    def __is_ready__(self) -> bool:
        """Ready once the bundle is loaded and verified and the drift worker (and batcher) run,
        until a shutdown drain begins; gRPC health follows the same."""
        if self._drain is not None and self._drain.draining:
            return False
        return self._app is not None and self._app.ready()

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop the gRPC server (health NOT_SERVING first, then in-flight calls drain), then
        the app: queued embeds still run, then the batcher and the drift worker stop."""
        if getattr(self, "_grpc", None) is not None:
            self._grpc.stop()
        if self._app is not None:
            self._app.close()

    # The BentoML APIs: BentoML's /schema.json and in-process calls. Over HTTP these routes
    # are answered by RestApi (see the module docstring), with the same results.

    @bentoml.api
    def embed(self, inputs: list, encoding: str = "float32") -> dict[str, Any]:
        """Inputs -> embeddings; `encoding`: float32, float16, uint8 or int8."""
        try:
            return jsonable(embed_body(self.app.embed(inputs, encoding)))
        except PayloadError as exc:
            raise InvalidArgument(str(exc)) from None

    @bentoml.api
    def reconstruct(self, inputs: list) -> dict[str, Any]:
        """Inputs -> decoder(encoder(inputs)), in model space."""
        try:
            return jsonable(reconstruct_body(self.app.reconstruct(inputs)))
        except PayloadError as exc:
            raise InvalidArgument(str(exc)) from None

    @bentoml.api
    def generate(
        self,
        n: int,
        seed: int = 0,
        fixed: dict[str, float] | None = None,
        output: str = "array",
    ) -> dict[str, Any]:
        """`n` decoded prior samples, deterministic for `seed`; `fixed`: {dim: value};
        `output`: array or png (image models)."""
        try:
            return jsonable(generate_body(self.app.generate(n, seed, fixed, output)))
        except PayloadError as exc:
            raise InvalidArgument(str(exc)) from None

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """Manifest summary, providers, limits and encodings (also GET /info)."""
        return self.app.info()

    @bentoml.api
    def drift(self) -> dict[str, Any]:
        """The drift monitor's latest report (also GET /drift)."""
        return self.app.drift()


def _current_rest_api() -> RestApi | None:
    """The REST API of this worker's service instance (None until it is constructed)."""
    try:
        service = bentoml.get_current_service()
    except Exception:  # BentoML raises when no instance is set yet
        return None
    return getattr(service, "rest", None)


# The BentoML APIs declare the media type the REST handlers answer (see the module docstring).
for _method in SculptService.apis.values():
    if _method.output_spec.media_type is None:
        _method.output_spec.media_type = "application/json"
# Outermost first: `Connection: close` while draining, the body-read deadline, the API key
# and body limit, then the REST routes, then BentoML's router.
SculptService.add_asgi_middleware(DrainingMiddleware)
SculptService.add_asgi_middleware(BodyTimeout)
SculptService.add_asgi_middleware(HttpGuard)
SculptService.add_asgi_middleware(RestFront, rest_api=_current_rest_api)
