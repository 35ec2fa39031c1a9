"""The REST front end: a BentoML 1.4 service over :class:`sculptserve.serving.core.EmbeddingApp`.

Run with ``SCULPT_BUNDLE=BUNDLE_DIR_OR_TAG bentoml serve
sculptserve.serving.http.service:SculptService`` (or ``sculpt serve``). All logic lives in
``EmbeddingApp``; this module only translates HTTP: the app returns arrays and this module turns
them into JSON (lists, base64 PNGs). Settings come from
:func:`sculptserve.serving.settings.load_settings` (the worker's ``__init__`` reads them once and
passes them down). No torch is imported anywhere on this path.

Routes
------
``POST /embed``, ``POST /reconstruct``, ``POST /generate``: JSON in and out (DESIGN.md
"Interfaces"). ``GET /info`` and ``GET /drift``: BentoML 1.4 registers every ``@bentoml.api``
as POST only (``_bentoml_impl/server/app.py`` builds ``Route(..., methods=["POST"])``, and
``bentoml.api`` has no method option), so both are also POST APIs with an empty body (those are
the ones in ``/docs.json``), and a small Starlette app mounted with ``mount_asgi_app`` answers
the GET form. BentoML's ``PassiveMount`` only matches paths its own routes match fully, and API
routes come first, so the mount hides nothing. ``/livez``, ``/readyz``, ``/metrics`` and
``/docs.json`` are BentoML's.

Errors
------
A :class:`~sculptserve.serving.errors.PayloadError` (any client mistake) becomes
``bentoml.exceptions.InvalidArgument``, which BentoML answers 400 with the message. Note that
BentoML 1.4 wraps the body in a list: ``[{"error": "..."}]``. Pydantic type errors are 400
(``{"error": ..., "detail": [...]}``); the body limit (413) and API key (401) answer
``{"error": ...}`` from :mod:`sculptserve.serving.http.guard`. Anything else is a bug and a 500.

Threads and batching
--------------------
BentoML runs a sync API in worker threads behind a capacity limiter of ``threads`` (the
service config). BentoML's default of 1 serialized every sync request of a worker: a /drift or
/info probe waited behind every queued /embed, and no two requests could meet in a batch.
``SCULPT_API_THREADS`` sets it (default :data:`DEFAULT_API_THREADS`; read when this module is
imported, because BentoML takes its service config from the decorator). With
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
from the request threads on a 2-core machine (benchmarks/RESULTS.md). The JSON APIs declare
their response media type, because BentoML otherwise rebuilds the output's JSON schema on every
response only to learn that it is ``application/json`` (14% of the worker's sampled Python
time under load).

Metrics
-------
The drift monitor's metrics (``sculpt_drift_*``, ``sculpt_embeddings_served_total``) go to
``prometheus_client``'s default registry, labelled ``worker=<BentoML worker index>``. BentoML
sets ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported and builds ``/metrics``
with a ``MultiProcessCollector``, so they appear there beside ``bentoml_service_*``, summed
(counters) or per process (gauges) across workers; see :mod:`sculptserve.serving.drift`.
"""

from __future__ import annotations

import base64
import logging
import os
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sculptserve.serving.core import EmbeddingApp, EmbedResult, GenerateResult, ReconstructResult
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.grpc.thread import GrpcThread
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


# --- arrays -> JSON (the REST form of the app's results) -----------------------------------


def embed_body(result: EmbedResult) -> dict[str, Any]:
    return {"embeddings": result.embeddings.tolist(), "encoding": result.encoding}


def reconstruct_body(result: ReconstructResult) -> dict[str, Any]:
    return {"outputs": result.outputs.tolist()}


def generate_body(result: GenerateResult) -> dict[str, Any]:
    if result.png is not None:
        samples: list[Any] = [base64.b64encode(png).decode("ascii") for png in result.png]
    else:
        samples = result.samples.tolist()
    return {"latents": result.latents.tolist(), "seed": result.seed, "samples": samples}


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
    envs=[{"name": "OPENBLAS_NUM_THREADS", "value": "1", "stage": "runtime"}],
)
class SculptService:
    """Embeddings, reconstructions and prior samples of one verified bundle."""

    def __init__(self) -> None:
        self._app: EmbeddingApp | None = None
        self._grpc: GrpcThread | None = None
        self._drain: Drain | None = None
        _single_process_metrics()
        settings = load_settings()  # every SCULPT_* variable, read and validated once
        # The bundle (SCULPT_BUNDLE: a folder or a BentoML tag) is verified (hashes, manifest,
        # ONNX graphs); the settings give the runtime, limits, micro-batcher and drift switch.
        self._app = EmbeddingApp.from_settings(settings, metric_labels={"worker": _worker_label()})
        log.info("bundle %s loaded", self._app.bundle.path)
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

    @bentoml.api
    def embed(self, inputs: list, encoding: str = "float32") -> dict[str, Any]:
        """Inputs -> embeddings; `encoding`: float32, float16, uint8 or int8."""
        try:
            return embed_body(self.app.embed(inputs, encoding))
        except PayloadError as exc:
            raise InvalidArgument(str(exc)) from None

    @bentoml.api
    def reconstruct(self, inputs: list) -> dict[str, Any]:
        """Inputs -> decoder(encoder(inputs)), in model space."""
        try:
            return reconstruct_body(self.app.reconstruct(inputs))
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
            return generate_body(self.app.generate(n, seed, fixed, output))
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


def _current() -> SculptService:
    return bentoml.get_current_service()


async def _get_info(_: Request) -> JSONResponse:
    return JSONResponse(_current().app.info())


async def _get_drift(_: Request) -> JSONResponse:
    return JSONResponse(_current().app.drift())


async def _embed_files(request: Request) -> JSONResponse:
    """POST /embed/files: multipart/form-data with image files in `files` (PNG/JPEG) and an
    optional `encoding` field. A Starlette route rather than a typed BentoML API: BentoML's
    multipart handling answered some malformed forms with a 500 (found by fuzzing)."""
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart: the client's to fix
        return JSONResponse({"error": f"could not parse the multipart form: {exc}"}, 400)
    files = [f for f in form.getlist("files") if hasattr(f, "read")]
    if not files:
        return JSONResponse({"error": "send image files in the multipart field 'files'"}, 400)
    encoding = form.get("encoding", "float32")
    if not isinstance(encoding, str):
        return JSONResponse({"error": "the field 'encoding' must be text"}, 400)
    items = [await f.read() for f in files]
    try:
        # In a worker thread like the BentoML APIs: decoding and the model call (or waiting
        # for a shared batch) must not block the event loop.
        result = await run_in_threadpool(_current().app.embed, items, encoding)
        return JSONResponse(embed_body(result))
    except PayloadError as exc:
        return JSONResponse({"error": str(exc)}, 400)


# GET forms of /info and /drift, and multipart image upload (see the docstrings for why these
# are a mount).
_get_routes = Starlette(
    routes=[
        Route("/info", _get_info, methods=["GET"]),
        Route("/drift", _get_drift, methods=["GET"]),
        Route("/embed/files", _embed_files, methods=["POST"]),
    ]
)
SculptService.mount_asgi_app(_get_routes, path="/", name="sculpt-get")
# Every API answers JSON; saying so spares BentoML a JSON-schema build per response (see the
# module docstring). BentoML itself sets media_type this way for streaming APIs.
for _method in SculptService.apis.values():
    if _method.output_spec.media_type is None:
        _method.output_spec.media_type = "application/json"
# Outermost of ours: `Connection: close` while draining, then the body-read deadline.
SculptService.add_asgi_middleware(DrainingMiddleware)
SculptService.add_asgi_middleware(BodyTimeout)
SculptService.add_asgi_middleware(HttpGuard)
