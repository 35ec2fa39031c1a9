"""The Open Inference Protocol (KServe v2) over REST, beside the sculpt API on the same port.

Routes (:data:`ROUTES`; HEAD is answered like GET):

- ``GET /v2``: server metadata (extensions: ``binary_tensor_data``);
- ``GET /v2/health/live`` and ``/v2/health/ready``: 200 ``{"live": true}`` / ``{"ready": true}``,
  503 when not ready (draining, or a dead drift worker); open without the API key, like /readyz;
- ``GET /v2/models/{name}[/versions/{v}]``: model metadata; ``.../ready``: model readiness;
- ``POST /v2/models/{name}[/versions/{v}]/infer``: inference, JSON tensors or the binary tensor
  data extension.

This module only translates: the models, their metadata and every tensor check are
:mod:`sculptserve.serving.oip`'s (shared with gRPC), and a model runs through the app's
``embed`` / ``decode`` (limits, micro-batching, drift monitor as on ``/embed``).

The binary extension: the body is the JSON header followed by raw little-endian row-major
tensor bytes, and the ``Inference-Header-Content-Length`` header gives the JSON's length; an
input sends ``"parameters": {"binary_data_size": N}`` instead of ``data`` (the byte blocks
follow in the order of such inputs). Its array is ``np.frombuffer`` over the request body, so
with the identity normalization the bytes reach ONNX Runtime without a copy. An output is
answered in binary when its request entry says ``"parameters": {"binary_data": true}``, or,
without one, when the request's ``binary_data_output`` parameter is true (tritonclient sets it
when no outputs are named); the response then has the same header and layout. Any other
request parameter goes to the model (``encoding``, on the encoder): unknown ones are 400s, as
are output parameters other than ``binary_data`` (no classification extension).

Errors are the one REST error body, whose ``error`` key is OIP's: 400 for a bad header or
tensor (``validation_error`` for a header that breaks the schema, ``invalid_input`` for a
tensor the models refuse: datatype, shape, byte count, NaN), 404 for an unknown path, model
or version, 415 for a compressed or non-JSON body, 503 while starting.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Union

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import TypeAliasType

from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.http.contract import format_validation_error
from sculptserve.serving.http.errors import ApiError, ErrorType
from sculptserve.serving.oip import (
    DATATYPES,
    ModelNotFound,
    OipModel,
    OipModels,
    Tensor,
    server_metadata,
    tensor_bytes,
)

__all__ = [
    "EXTENSIONS",
    "HEADER_LENGTH",
    "PREFIX",
    "InferRequest",
    "OipRest",
    "is_oip_path",
]

PREFIX = "/v2"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "inference-header-content-length"
_JSON = "application/json"
_OCTETS = "application/octet-stream"
# The request bodies infer takes: tritonclient sends none; a binary body may say octet-stream.
_INFER_MEDIA_TYPES = ("", _JSON, _OCTETS)
_TRANSPORT_PARAMETERS = ("binary_data_output",)  # request parameters this layer consumes
# JSON values a valid header may hold beyond its tensors' data (names, shapes, parameters)
_ENVELOPE_COMMAS = 64

_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?$"
)


def is_oip_path(path: str) -> bool:
    """Whether the path belongs to the protocol (answered here, 404 included)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


# --- the request header (JSON) ---------------------------------------------------------------

_STRICT = ConfigDict(strict=True, extra="forbid")


class InputParameters(BaseModel):
    model_config = _STRICT
    binary_data_size: Annotated[int, Field(ge=0)] | None = Field(
        None, description="bytes of this tensor after the JSON header (binary extension)"
    )


class RequestInput(BaseModel):
    """An input tensor: ``data`` (row-major, flat or nested) or ``binary_data_size`` bytes."""

    model_config = _STRICT
    name: str
    shape: list[int]
    datatype: str = Field(json_schema_extra={"enum": list(DATATYPES)})
    parameters: InputParameters | None = None
    data: list[Any] | None = None


class OutputParameters(BaseModel):
    model_config = _STRICT
    binary_data: bool | None = Field(None, description="answer this output as raw bytes")


class RequestOutput(BaseModel):
    model_config = _STRICT
    name: str
    parameters: OutputParameters | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: the JSON (header) of an inference request."""

    model_config = _STRICT
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description="binary_data_output (bool): all outputs as raw bytes; encoding (str, the "
        "encoder model): float32, float16, uint8 or int8, as on /embed",
    )
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """The JSON (header) of an inference response."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


# JSON ``data`` by the datatype's kind, strictly: a boolean is not a number, nor a number a
# boolean (numpy would silently turn [true, 0.5] into [1.0, 0.5]).
def _tree(name: str, scalar: Any) -> TypeAdapter:
    return TypeAdapter(TypeAliasType(name, list[Union[scalar, name]]))  # noqa: UP007


_DATA = {
    "f": _tree("Numbers", Annotated[float, Strict()]),
    "i": _tree("Integers", StrictInt),
    "u": _tree("Integers", StrictInt),
    "b": _tree("Booleans", StrictBool),
}


def _json_values(model: OipModel, item: RequestInput) -> list[Any]:
    """An input's JSON ``data``, checked against its datatype's kind (after the datatype and
    shape: those are what a wrong tensor gets told first)."""
    model.input_spec(item.name).check(item.datatype, item.shape)
    try:
        return _DATA[DATATYPES[item.datatype].kind].validate_python(item.data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = "".join(f"[{i}]" for i in error["loc"] if isinstance(i, int))
        raise PayloadError(
            f"input '{item.name}': data{where}: {error['msg']} (got {error['input']!r:.40})"
        ) from None


# --- responses ---------------------------------------------------------------------------------


def _flat_json(array: np.ndarray) -> bytes:
    """A batch as one flat JSON list, a row at a time (no long GIL hold for a large one)."""
    rows = array.reshape(len(array), -1)
    return b"[" + b",".join(to_json(row.tolist())[1:-1] for row in rows) + b"]"


def _json(body: Any) -> Response:
    return Response(to_json(body), media_type=_JSON)


def _infer_response(
    model: OipModel, request_id: str | None, outputs: Sequence[Tensor], binary: Sequence[bool]
) -> Response:
    """The response: JSON outputs inline; binary ones after the JSON header, in order."""
    parts: list[bytes] = []
    blocks: list[memoryview] = []
    for tensor, as_bytes in zip(outputs, binary, strict=True):
        head = to_json({"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape})
        if as_bytes:
            blocks.append(tensor_bytes(tensor.array))
            tail = b'"parameters":' + to_json({"binary_data_size": blocks[-1].nbytes})
        else:
            tail = b'"data":' + _flat_json(tensor.array)
        parts.append(head[:-1] + b"," + tail + b"}")
    envelope = {"model_name": model.name, "model_version": model.version}
    if request_id is not None:
        envelope["id"] = request_id
    header = to_json(envelope)[:-1] + b',"outputs":[' + b",".join(parts) + b"]}"
    if not blocks:
        return Response(header, media_type=_JSON)
    return Response(
        b"".join([header, *blocks]),
        media_type=_OCTETS,
        headers={HEADER_LENGTH: str(len(header))},
    )


# --- the handlers --------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]
InThread = Callable[..., Awaitable[Any]]


class OipRest:
    """The protocol's REST routes for one app: routing, parsing, and the responses."""

    def __init__(
        self, app: EmbeddingApp, *, in_thread: InThread, ready: Callable[[], bool]
    ) -> None:
        self.models = OipModels(app)
        self.in_thread = in_thread
        self.ready = ready
        numel = max(math.prod(t.shape[1:]) for m in self.models for t in (*m.inputs, *m.outputs))
        # a valid header holds at most max_items examples of the largest tensor
        self.max_commas = app.limits.max_items * numel + _ENVELOPE_COMMAS
        self._server = server_metadata(EXTENSIONS)
        self._fixed: dict[str, dict[str, Handler]] = {
            PREFIX: {"GET": self._server_metadata},
            f"{PREFIX}/health/live": {"GET": self._live},
            f"{PREFIX}/health/ready": {"GET": self._server_ready},
        }
        # a model path's last part -> (method, handler(request, name=, version=))
        self._model_actions: dict[str | None, tuple[str, Callable[..., Awaitable[Response]]]] = {
            None: ("GET", self._model_metadata),
            "/ready": ("GET", self._model_ready),
            "/infer": ("POST", self._infer),
        }

    def route(self, path: str) -> dict[str, Handler]:
        """HTTP method -> handler for ``path`` (a 404 ApiError for a path not here)."""
        if path in self._fixed:
            return self._fixed[path]
        match = _MODEL_PATH.match(path)
        if match is None:
            raise ApiError(
                ErrorType.NOT_FOUND,
                f"no route {path}; the protocol's routes: /v2, /v2/health/live, "
                "/v2/health/ready, /v2/models/{name}[/versions/{v}][/ready|/infer]",
            )
        name, version, action = match.group("name", "version", "action")
        method, handler = self._model_actions[action]
        return {method: functools.partial(handler, name=name, version=version)}

    def _model(self, name: str, version: str | None) -> OipModel:
        try:
            return self.models.get(name, version)
        except ModelNotFound as exc:
            raise ApiError(ErrorType.NOT_FOUND, str(exc)) from None

    def _not_ready(self) -> ApiError:
        return ApiError(ErrorType.UNAVAILABLE, "not ready: starting, draining or degraded")

    async def _server_metadata(self, request: Request) -> Response:
        return _json(self._server)

    async def _live(self, request: Request) -> Response:
        return _json({"live": True})

    async def _server_ready(self, request: Request) -> Response:
        if not self.ready():
            raise self._not_ready()
        return _json({"ready": True})

    async def _model_metadata(self, request: Request, name: str, version: str | None) -> Response:
        return _json(self._model(name, version).metadata())

    async def _model_ready(self, request: Request, name: str, version: str | None) -> Response:
        self._model(name, version)
        if not self.ready():
            raise self._not_ready()
        return _json({"name": name, "ready": True})

    async def _infer(self, request: Request, name: str, version: str | None) -> Response:
        model = self._model(name, version)
        _check_body_headers(request)
        header_length = _header_length(request)
        body = await request.body()
        return await self.in_thread(self._run, model, body, header_length)

    # -- in a worker thread -------------------------------------------------------------------

    def _run(self, model: OipModel, body: bytes, header_length: int | None) -> Response:
        if header_length is None:
            header_length = len(body)
        if header_length > len(body):
            raise ApiError(
                ErrorType.VALIDATION,
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes",
            )
        request = self._parse(body, header_length)
        try:
            # a view: binary tensors are arrays over the request's own bytes
            inputs = self._inputs(model, request, memoryview(body)[header_length:])
            parameters = dict(request.parameters or {})
            binary_default = parameters.pop("binary_data_output", False)
            if not isinstance(binary_default, bool):
                raise PayloadError("parameter 'binary_data_output' must be a bool")
            requested = request.outputs or []
            outputs = model.infer(inputs, parameters, [o.name for o in requested] or None)
        except PayloadError as exc:
            raise ApiError(ErrorType.INVALID_INPUT, str(exc)) from None
        asked = {o.name: (o.parameters.binary_data if o.parameters else None) for o in requested}
        binary = [
            binary_default if asked.get(t.name) is None else bool(asked[t.name]) for t in outputs
        ]
        return _infer_response(model, request.id, outputs, binary)

    def _parse(self, body: bytes, header_length: int) -> InferRequest:
        commas = body.count(b",", 0, header_length)
        if commas > self.max_commas:
            raise ApiError(
                ErrorType.VALIDATION,
                f"the JSON holds about {commas + 1} values, more than any valid request; "
                "split the batch (or send the tensors as binary data)",
            )
        header = body if header_length == len(body) else body[:header_length]
        try:
            return InferRequest.model_validate_json(header)
        except ValidationError as exc:
            if any(err["type"] == "json_invalid" for err in exc.errors()):
                reason = exc.errors()[0]["msg"]
                raise ApiError(
                    ErrorType.INVALID_JSON, f"the JSON header is not valid JSON: {reason}"
                ) from None
            raise ApiError(ErrorType.VALIDATION, format_validation_error(exc)) from None

    @staticmethod
    def _inputs(model: OipModel, request: InferRequest, binary: memoryview) -> list[Tensor]:
        """The request's input tensors: binary blocks in order, or JSON data."""
        tensors = []
        offset = 0
        for item in request.inputs:
            size = item.parameters.binary_data_size if item.parameters else None
            if size is not None:
                if item.data is not None:
                    raise PayloadError(
                        f"input '{item.name}' has both data and binary_data_size; send one"
                    )
                if offset + size > len(binary):
                    raise PayloadError(
                        f"input '{item.name}' declares {size} bytes at offset {offset}, but "
                        f"{len(binary)} bytes follow the JSON header"
                    )
                block = binary[offset : offset + size]
                offset += size
                tensor = model.input_from_bytes(item.name, item.datatype, item.shape, block)
            elif item.data is not None:
                values = _json_values(model, item)
                tensor = model.input_from_values(item.name, item.datatype, item.shape, values)
            else:
                raise PayloadError(
                    f"input '{item.name}' has no data: send 'data' or, after the JSON header, "
                    "'parameters': {'binary_data_size': N} bytes"
                )
            tensors.append(tensor)
        if offset != len(binary):
            raise PayloadError(
                f"{len(binary)} bytes follow the JSON header but the inputs' binary_data_size "
                f"add up to {offset}"
            )
        return tensors

    # -- documentation ------------------------------------------------------------------------

    def openapi(self, auth: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The protocol's (paths, component schemas) for /docs.json."""
        models = [InferRequest, InferResponse, ModelMetadata, ServerMetadata]
        _, defs = models_json_schema(
            [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
        )
        schemas = defs.get("$defs", {})
        names = ", ".join(m.name for m in self.models)

        def op(
            summary: str, response: str, errors: Sequence[int], open_: bool = False, **extra: Any
        ) -> dict[str, Any]:
            secured = auth and not open_
            out: dict[str, Any] = {
                "summary": summary,
                "tags": ["Open Inference Protocol"],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {_JSON: {"schema": {"$ref": _ref(response)}}},
                    },
                    **{
                        str(s): {
                            "description": _STATUS_TEXT[s],
                            "content": {_JSON: {"schema": {"$ref": _ref("ErrorBody")}}},
                        }
                        for s in (*errors, *((401,) if secured else ()))
                    },
                },
                **extra,
            }
            if auth:  # an empty list: this operation needs no key, whatever the others do
                out["security"] = [{"bearer": []}] if secured else []
            return out

        schemas["Health"] = {"type": "object", "additionalProperties": {"type": "boolean"}}
        model_params = [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        ]
        version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
        infer = op(
            f"Inference (models: {names})",
            "InferResponse",
            (400, 404, 413, 415, 500),
            requestBody={
                "required": True,
                "description": "JSON, or (binary tensor data extension) the JSON header "
                f"followed by raw little-endian tensor bytes, its length in {HEADER_LENGTH}",
                "content": {
                    _JSON: {"schema": {"$ref": _ref("InferRequest")}},
                    _OCTETS: {"schema": {"type": "string", "format": "binary"}},
                },
            },
        )
        paths: dict[str, Any] = {
            PREFIX: {"get": op("Server metadata", "ServerMetadata", ())},
            f"{PREFIX}/health/live": {"get": op("Liveness", "Health", (), open_=True)},
            f"{PREFIX}/health/ready": {"get": op("Readiness", "Health", (503,), open_=True)},
        }
        for base, params in (
            (f"{PREFIX}/models/{{name}}", model_params),
            (f"{PREFIX}/models/{{name}}/versions/{{version}}", [*model_params, version]),
        ):
            paths[base] = {"get": op("Model metadata", "ModelMetadata", (404,), parameters=params)}
            paths[f"{base}/ready"] = {
                "get": op("Model readiness", "Health", (404, 503), parameters=params)
            }
            paths[f"{base}/infer"] = {"post": {**infer, "parameters": params}}
        return paths, schemas


def _ref(name: str) -> str:
    return f"#/components/schemas/{name}"


_STATUS_TEXT = {
    400: "A malformed header or a tensor the model refuses (error_type says which)",
    401: "Missing or wrong API key",
    404: "No such model or version",
    413: "The body is larger than SCULPT_REQUEST_MAX_BYTES",
    415: "A compressed body, or a Content-Type other than JSON or octet-stream",
    500: "A server bug (logged with its traceback)",
    503: "Not ready (starting, draining or degraded)",
}


def _check_body_headers(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media not in _INFER_MEDIA_TYPES:
        raise ApiError(
            ErrorType.UNSUPPORTED_MEDIA_TYPE,
            f"infer takes Content-Type {_JSON} or {_OCTETS} (binary extension), got {media}",
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(
            ErrorType.UNSUPPORTED_MEDIA_TYPE,
            f"compressed requests (Content-Encoding {encoding}) are not supported; send the "
            "body uncompressed",
        )


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ApiError(
            ErrorType.VALIDATION,
            f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}",
        )
    return int(value)
