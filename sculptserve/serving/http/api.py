"""The REST handlers: HTTP bytes -> validated request -> the core -> JSON bytes, and every error.

:class:`RestFront` is an ASGI middleware in front of BentoML's router: requests to the paths
of :data:`~sculptserve.serving.http.contract.OPERATIONS` (and ``/docs.json``) go to the worker's
:class:`RestApi`; everything else (``/livez``, ``/readyz``, ``/metrics``, BentoML's
``/schema.json`` and UI) goes on to BentoML. BentoML 1.4's own handler for ``@bentoml.api``
routes does not fit a strict contract, because it:

- parses and validates the JSON body on the event loop: a 5.7 MiB body of a million items held
  the loop 2.7 s, so ``/livez`` and ``/readyz`` missed their probe timeouts;
- answers a malformed multipart body to any JSON route with a 500, and takes any other
  Content-Type as JSON;
- coerces types (``{"n": true}`` was 1 sample, ``{"n": "5"}`` five), wraps its 400 bodies in a
  list and logs every client error at ERROR with a traceback (20 MB of log from a fuzz run).

Here, per request: the Content-Type is checked (415), the body read, then in a worker thread
(at most ``SCULPT_API_THREADS`` at once, like BentoML's sync APIs) the number of JSON values is
bounded (400, before any parse), the body is parsed and validated against the bundle's
:class:`~sculptserve.serving.http.contract.Contract` (400), the core runs, and the answer is
serialized to JSON one row at a time (so neither a large request nor a large answer holds the
GIL, and with it the event loop, for long). Client errors are one INFO line each; a 500 is
logged with its traceback. Every error body is ``{"error": ..., "error_type": ...}``
(:mod:`sculptserve.serving.http.errors`).

``/embed`` also takes an ``application/x-npy`` body (:mod:`~sculptserve.serving.http.npy`; its
``encoding`` in the query string) and answers .npy when asked (``Accept: application/x-npy``):
the binary fast path, an array over the request's bytes with no per-item decoding. The Open
Inference Protocol's routes (``/v2...``) are :class:`~sculptserve.serving.http.oip.OipRest`'s,
on the same threads, behind the same guard; /docs.json lists them too.

The ``@bentoml.api`` methods of the service stay: they give BentoML's ``/schema.json`` (which
``bentoml.SyncHTTPClient`` reads) and in-process calls; their HTTP routes are answered here.
"""

from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import numpy as np
from pydantic_core import to_json
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from sculptserve.serving.core import (
    EmbeddingApp,
    EmbedResult,
    GenerateResult,
    ReconstructResult,
    check_finite,
)
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.http.contract import OPERATIONS, Contract
from sculptserve.serving.http.errors import ApiError, ErrorType, send_error
from sculptserve.serving.http.npy import NPY, read_npy, write_npy
from sculptserve.serving.http.oip import OipRest, is_oip_path

__all__ = [
    "ROUTES",
    "RestApi",
    "RestFront",
    "dump_json",
    "embed_body",
    "generate_body",
    "jsonable",
    "reconstruct_body",
]

log = logging.getLogger(__name__)

DOCS_PATH = "/docs.json"
# path -> method -> handler name; HEAD is answered like GET.
ROUTES: dict[str, dict[str, str]] = {DOCS_PATH: {"GET": "docs"}}
for _op in OPERATIONS:
    ROUTES.setdefault(_op.path, {}).update(dict.fromkeys(_op.methods, _op.name))

# --- results -> JSON (the REST form of the app's results) ----------------------------------


def embed_body(result: EmbedResult) -> dict[str, Any]:
    return {"embeddings": result.embeddings, "encoding": result.encoding}


def reconstruct_body(result: ReconstructResult) -> dict[str, Any]:
    return {"outputs": result.outputs}


def generate_body(result: GenerateResult) -> dict[str, Any]:
    if result.png is not None:
        samples: Any = [base64.b64encode(png).decode("ascii") for png in result.png]
    else:
        # JSON cannot carry NaN/Inf (gRPC's tensors can): huge `fixed` values can overflow the
        # decoder, which is the client's to fix (a 400).
        check_finite(result.samples, "samples")
        samples = result.samples
    return {"latents": result.latents, "seed": result.seed, "samples": samples}


def _array_json(array: np.ndarray) -> bytes:
    """One row at a time: each call holds the GIL briefly, so the event loop keeps running."""
    if array.ndim < 2:
        return to_json(array.tolist())
    return b"[" + b",".join(to_json(row.tolist()) for row in array) + b"]"


def dump_json(body: Mapping[str, Any]) -> bytes:
    """A result body (numpy arrays allowed as values) as JSON bytes."""
    parts = [
        to_json(key) + b":" + (_array_json(v) if isinstance(v, np.ndarray) else to_json(v))
        for key, v in body.items()
    ]
    return b"{" + b",".join(parts) + b"}"


def jsonable(body: Mapping[str, Any]) -> dict[str, Any]:
    """A result body with arrays as lists (for BentoML's in-process API methods)."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in body.items()}


# --- the handlers --------------------------------------------------------------------------

Run = Callable[[EmbeddingApp, Any], dict[str, Any]]
# operation -> what it does with a validated request
_RUNS: dict[str, Run] = {
    "reconstruct": lambda app, req: reconstruct_body(app.reconstruct(req.inputs)),
    "generate": lambda app, req: generate_body(
        app.generate(req.n, req.seed, req.fixed, req.output)
    ),
    "embed_files": lambda app, req: embed_body(app.embed(req.files, req.encoding)),
}
_READS: dict[str, Callable[[EmbeddingApp], dict[str, Any]]] = {
    "info": EmbeddingApp.info,
    "drift": EmbeddingApp.drift,
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _require_media_type(request: Request, *expected: str) -> str:
    got = _media_type(request)
    if got not in expected:
        hint = "; image files go to /embed/files" if "multipart" in got else ""
        raise ApiError(
            ErrorType.UNSUPPORTED_MEDIA_TYPE,
            f"{request.url.path} takes Content-Type {' or '.join(expected)}, got "
            f"{got or 'none'}{hint}",
        )
    return got


def _accepts_npy(request: Request) -> bool:
    """Whether the client asks for an .npy answer (``Accept: application/x-npy``)."""
    ranges = request.headers.get("accept", "").split(",")
    return any(r.partition(";")[0].strip().lower() == NPY for r in ranges)


def _query_encoding(request: Request, npy: bool) -> str | None:
    """An .npy body has no room for options: its ``encoding`` comes in the query string (once);
    a JSON body has its options in the body and takes no query."""
    keys = [key for key, _ in request.query_params.multi_items()]
    allowed = ("encoding",) if npy else ()
    bad = [key for key in keys if key not in allowed] or keys[1:]
    if bad:
        takes = "?encoding= (once)" if npy else "no query: options go in the JSON body"
        raise ApiError(
            ErrorType.VALIDATION, f"query parameter {bad[0]!r} not taken; this body takes {takes}"
        )
    return request.query_params.get("encoding", "float32") if npy else None


async def _part_value(name: str, value: str | UploadFile) -> str | bytes:
    """A multipart part as the form model takes it: file parts as bytes, text as str.

    A ``files`` part sent without a filename (RFC 7578 says SHOULD, not MUST) reaches us as
    text, decoded as UTF-8 or, failing that, latin-1. PNG and JPEG files are never UTF-8 (their
    first byte, 0x89 or 0xFF, cannot start a UTF-8 character), so latin-1 gives an image's
    bytes back exactly; text that does not fit latin-1 was not an image (the core says so).
    """
    if isinstance(value, UploadFile):
        return await value.read()
    if name == "files":
        return value.encode("latin-1", errors="replace")
    return value


class RestApi:
    """The REST API of one worker's app: its contract, handlers and thread limit."""

    def __init__(
        self,
        app: EmbeddingApp,
        *,
        threads: int,
        auth: bool = False,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """``ready``: the service's readiness (the protocol's health routes answer it);
        default: the app's."""
        self.app = app
        self.contract = Contract(app, auth=auth)
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop
        # The Open Inference Protocol's routes, on the same threads as the sculpt API
        self.oip = OipRest(app, in_thread=self._in_thread, ready=ready or app.ready)
        docs = self.contract.openapi()
        paths, schemas = self.oip.openapi(auth)
        docs["paths"].update(paths)
        docs["components"]["schemas"].update(schemas)
        self._docs = to_json(docs)
        self._handlers: dict[str, Callable[[Request, str], Awaitable[Response]]] = {
            "embed": self._embed,
            "reconstruct": self._json,
            "generate": self._json,
            "embed_files": self._form,
            "info": self._read,
            "drift": self._read,
            "docs": self._openapi,
        }

    def _route(self, path: str) -> Mapping[str, Callable[[Request], Awaitable[Response]]]:
        """HTTP method -> handler for a path of :data:`ROUTES` or of the protocol."""
        names = ROUTES.get(path)
        if names is None:
            return self.oip.route(path)
        return {m: functools.partial(self._handlers[n], name=n) for m, n in names.items()}

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer a request to one of :data:`ROUTES` or the Open Inference Protocol's
        (404 for another path under /v2, 405 for another method)."""
        request = Request(scope, receive)
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        try:
            methods = self._route(scope["path"])
            handler = methods.get(method)
            if handler is None:
                allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
                raise ApiError(
                    ErrorType.METHOD_NOT_ALLOWED,
                    f"{scope['path']} answers {allowed}, not {scope['method']}",
                    [("allow", allowed)],
                )
            response = await handler(request)
        except ClientDisconnect:  # gone, or cut off by the guard's body limit (its 413 is out)
            return
        except ApiError as exc:
            log.info(
                "%s %s: %d %s: %s",
                scope["method"],
                scope["path"],
                exc.status,
                exc.error_type,
                exc.message,
            )
            response = JSONResponse(exc.body(), exc.status, headers=exc.headers)
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            error = ApiError(ErrorType.INTERNAL, "internal error; the server log has the details")
            response = JSONResponse(error.body(), error.status)
        await response(scope, receive, send)

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    def _run(self, name: str, request: Any) -> bytes:
        try:
            return dump_json(_RUNS[name](self.app, request))
        except PayloadError as exc:  # schema-valid but unusable: the core says why
            raise ApiError(ErrorType.INVALID_INPUT, str(exc)) from None

    def _parse_and_run(self, name: str, body: bytes) -> bytes:
        return self._run(name, self.contract.parse_json(name, body))

    async def _embed(self, request: Request, name: str) -> Response:
        """/embed: a JSON or an .npy body; a JSON or (``Accept: application/x-npy``) an .npy
        answer."""
        npy_in = _require_media_type(request, "application/json", NPY) == NPY
        encoding = _query_encoding(request, npy_in)
        body = await request.body()
        return await self._in_thread(self._run_embed, body, encoding, _accepts_npy(request))

    def _run_embed(self, body: bytes, npy_encoding: str | None, npy_out: bool) -> Response:
        """``npy_encoding``: the query's encoding for an .npy body; None: a JSON body."""
        try:
            if npy_encoding is None:
                request = self.contract.parse_json("embed", body)
                result = self.app.embed(request.inputs, request.encoding)
            else:  # the fast path: an array over the body's bytes, no per-item decoding
                result = self.app.embed(read_npy(body), npy_encoding)
        except PayloadError as exc:
            raise ApiError(ErrorType.INVALID_INPUT, str(exc)) from None
        if npy_out:
            return Response(write_npy(result.embeddings), media_type=NPY)
        return Response(dump_json(embed_body(result)), media_type="application/json")

    async def _json(self, request: Request, name: str) -> Response:
        _require_media_type(request, "application/json")
        body = await request.body()
        return Response(
            await self._in_thread(self._parse_and_run, name, body), media_type="application/json"
        )

    async def _form(self, request: Request, name: str) -> Response:
        _require_media_type(request, "multipart/form-data")
        try:
            form = await request.form(max_files=self.contract.max_items, max_fields=8)
        except Exception as exc:  # Starlette and python-multipart raise several types
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ApiError(
                ErrorType.INVALID_FORM, f"could not parse the multipart form: {reason}"
            ) from None
        try:
            fields: dict[str, Any] = {}
            for key in form:
                values = [await _part_value(key, v) for v in form.getlist(key)]
                fields[key] = values if key == "files" or len(values) > 1 else values[0]
        finally:
            await form.close()
        parsed = self.contract.parse_form(fields)
        return Response(
            await self._in_thread(self._run, name, parsed), media_type="application/json"
        )

    async def _read(self, request: Request, name: str) -> Response:
        # In a thread: /drift may wait for the monitor's lock while a window is scored.
        body = await self._in_thread(_READS[name], self.app)
        return Response(dump_json(body), media_type="application/json")

    async def _openapi(self, request: Request, name: str) -> Response:
        return Response(self._docs, media_type="application/json")


class RestFront:
    """ASGI middleware: the REST routes to the current worker's :class:`RestApi`, the rest
    to BentoML. ``rest_api`` finds the worker's API (the service instance holds it)."""

    def __init__(self, app: Any, *, rest_api: Callable[[], RestApi | None]) -> None:
        self.app = app
        self.rest_api = rest_api

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not (scope["path"] in ROUTES or is_oip_path(scope["path"])):
            await self.app(scope, receive, send)
            return
        api = self.rest_api()
        if api is None:  # between worker start and the bundle being loaded
            await send_error(send, ErrorType.UNAVAILABLE, "the service is starting; retry")
            return
        await api.handle(scope, receive, send)
