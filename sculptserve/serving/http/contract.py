"""The REST contract of one served bundle: request validation and the OpenAPI document.

One source for both. When a worker starts, :class:`Contract` builds pydantic models from the
bundle (input shape and accepted layouts, latent size, image or tabular) and the limits
(``SCULPT_REQUEST_MAX_ITEMS``, ``SCULPT_REQUEST_MAX_SAMPLES``). The REST handlers validate every
request with these models and ``/docs.json`` is generated from the same models, so the schema
states what the API accepts and the API accepts what the schema states:

- JSON types are strict: ``{"n": true}`` and ``{"n": "5"}`` are 400s, not 1 and 5 (``5.0``
  is 5: JSON has one number type); unknown fields are 400s (a misspelt option must not be
  silently ignored).
- An input item is a nested list of numbers in one of the model's layouts (each level's
  length is fixed), a base64 PNG/JPEG string (image models with 1 or 3 channels), or a raw
  float32 object whose ``shape`` is one of the layouts and whose ``b64`` has exactly the byte
  count. Numbers are finite and within float32 (``|x| <= 3.4028235e38``).
- What JSON Schema cannot state stays with the core (:mod:`sculptserve.serving.inputs`), a 400
  ``invalid_input`` with the core's message: whether a PNG decodes to W x H, whether raw bytes
  hold NaN, and whether finite values overflow float32 in the normalization or the model
  (which do depends on the weights).

Before any parse, :meth:`Contract.check_size` bounds the number of JSON values a body may hold
(counting commas, which every value after the first in a container needs): a valid body holds
at most ``max_items`` items of the model's size, so anything larger is a 400 without building
a million Python objects (a parse holds the GIL, and a long one stalls the event loop, health
probes included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from sculptserve.serving.core import OUTPUT_FORMATS, EmbeddingApp
from sculptserve.serving.drift import STATES
from sculptserve.serving.encodings import ENCODINGS
from sculptserve.serving.http.errors import STATUS, ApiError, ErrorType
from sculptserve.serving.http.npy import NPY
from sculptserve.serving.inputs import PIL_MODES, accepted_layouts

__all__ = ["FLOAT32_MAX", "OPERATIONS", "Contract", "Operation", "format_validation_error"]

FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_MAX = 2**63 - 1  # gRPC's seed is an int64: both transports take the same seeds
_STRICT = ConfigDict(strict=True, extra="forbid")
_B64 = r"^[A-Za-z0-9+/]*={0,2}$"
_JSON = "application/json"
_FORM = "multipart/form-data"
# Commas a valid body may hold beyond its items: top-level fields and a raw item's keys,
# shape and a data-URL prefix.
_ENVELOPE_COMMAS = 16
_ITEM_OVERHEAD_COMMAS = 8

# A raw value: a JSON number (not a boolean or a string) that is finite in float32.
Value = Annotated[
    float,
    Field(
        strict=True,
        allow_inf_nan=False,
        ge=-FLOAT32_MAX,
        le=FLOAT32_MAX,
        json_schema_extra={"format": "float"},
    ),
]


def _integral(value: Any) -> Any:
    """JSON has one number type: 5.0 is the integer 5 (as JSON Schema says); a boolean or a
    string is not a number at all."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(**bounds: int) -> Any:
    """An integer as JSON and JSON Schema see it (pydantic's strict int would refuse 5.0).
    The bounds come before the validator so that they stay JSON Schema's minimum/maximum."""
    return Annotated[int, Field(strict=False, **bounds), BeforeValidator(_integral)]


def nested_type(shape: Sequence[int], value: Any = Value) -> Any:
    """``list[list[...value]]`` with each level's length fixed to ``shape``."""
    out = value
    for size in reversed(shape):
        out = Annotated[list[out], Field(min_length=size, max_length=size)]  # type: ignore[valid-type]
    return out


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    for types, name in (
        (bool, "a boolean"),
        ((int, float), "a number"),
        (str, "a string"),
        (list, "an array"),
        (dict, "an object"),
    ):
        if isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


def _outer_shape(value: Any) -> tuple[int, ...]:
    """The lengths along the first element of each level: the shape a nested list claims
    (a ragged one is then caught, with its position, by the layout's validator)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _loc_str(loc: Sequence[str | int]) -> str:
    """('inputs', 0, 'b64') -> 'inputs[0].b64'; ('fixed', '9', '[key]') -> "fixed key '9'"."""
    out = ""
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if i + 1 < len(loc) and loc[i + 1] == "[key]":
            out += f" key {part!r}"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _got(value: Any) -> str:
    """A short account of a rejected value: scalars shown (cut to 40 characters), containers
    named by their JSON type."""
    if isinstance(value, list | dict):
        return _json_type(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _message(err: Any) -> str:
    bound = (err.get("ctx") or {}).get("le", (err.get("ctx") or {}).get("ge"))
    if bound is not None and abs(bound) == FLOAT32_MAX:  # pydantic would print 39 digits
        return f"Input should be within float32 (|x| <= {FLOAT32_MAX:.8g})"
    return err["msg"]


def format_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """One line naming each problem (at most ``limit``), where it is and what was sent."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:limit]:
        # missing fields have no value; our own item errors already describe it
        got = "" if err["type"] in ("missing", "item", "shape") else f" (got {_got(err['input'])})"
        parts.append(f"{_loc_str(err['loc'])}: {_message(err)}{got}")
    more = f"; {len(errors) - limit} more" if len(errors) > limit else ""
    return "; ".join(parts) + more


class _ItemValidator:
    """Validates one input item against the form its JSON type selects (a nested list by the
    shape it claims, a string as an image, an object as a raw array), so that a message names
    that form rather than listing why every alternative failed."""

    def __init__(self, layouts: Sequence[tuple[int, ...]], images: bool, raw: type[BaseModel]):
        self.nested = {shape: TypeAdapter(nested_type(shape)) for shape in layouts}
        self.images = images
        self.raw = TypeAdapter(raw)
        forms = ["a nested list of numbers"]
        forms += ["a base64 PNG/JPEG string"] if images else []
        self.forms = ", ".join(forms) + " or a raw float32 object {b64, dtype, shape}"

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            shape = _outer_shape(value)
            adapter = self.nested.get(shape)
            if adapter is None:
                expected = " or ".join(_shape_str(s) for s in self.nested)
                self._fail(f"nested list has shape {_shape_str(shape)}, expected {expected}")
            self._check(adapter, value, f"nested list {_shape_str(shape)}")
        elif isinstance(value, dict):  # validated form: a shape of 4.0s becomes 4s
            return self._check(self.raw, value, "raw array").model_dump()
        elif not (self.images and isinstance(value, str)):  # strings: the core decodes them
            self._fail(f"got {_json_type(value)}; an item is {self.forms}")
        return value  # the core converts the parsed value itself; validation only checks it

    @staticmethod
    def _check(adapter: TypeAdapter, value: Any, form: str) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            _ItemValidator._fail(f"{form}: {format_validation_error(exc, limit=1)}")

    @staticmethod
    def _fail(message: str) -> NoReturn:
        raise PydanticCustomError("item", "{message}", {"message": message})


def _raw_array_model(layouts: Sequence[tuple[int, ...]], numel: int) -> type[BaseModel]:
    chars = 4 * math.ceil(4 * numel / 3)  # base64 of numel float32 values
    shapes = [list(s) for s in layouts]

    def accepted(shape: list[int]) -> list[int]:
        if tuple(shape) not in layouts:
            expected = " or ".join(map(_shape_str, layouts))
            raise PydanticCustomError(
                "shape", "{got} is not a layout of this model; expected {expected}",
                {"got": _shape_str(shape), "expected": expected},
            )  # fmt: skip
        return shape

    return create_model(
        "RawArray",
        __config__=_STRICT,
        __doc__=(
            "An example as little-endian float32 bytes, base64-encoded (raw values, before the "
            "bundle's normalization)."
        ),
        b64=(
            Annotated[
                str,
                Field(
                    min_length=chars,
                    max_length=chars,
                    pattern=_B64,
                    description=f"base64 of {numel} little-endian float32 values ({4 * numel} "
                    "bytes), finite",
                    json_schema_extra={"format": "float32-base64"},
                ),
            ],
            ...,
        ),
        dtype=(Literal["float32"], "float32"),
        shape=(
            Annotated[
                list[integer()],  # type: ignore[misc]
                AfterValidator(accepted),
                WithJsonSchema({"type": "array", "items": {"type": "integer"}, "enum": shapes}),
            ],
            ...,
        ),
    )


def _item_schema(
    layouts: Sequence[tuple[int, ...]], images: bool, raw: type[BaseModel], spec: Any
) -> dict[str, Any]:
    forms: list[dict[str, Any]] = [
        {"title": f"nested list {_shape_str(s)}", **TypeAdapter(nested_type(s)).json_schema()}
        for s in layouts
    ]
    if images:
        c, h, w = spec.shape
        forms.append(
            {
                "title": "image",
                "type": "string",
                "format": "image-base64",
                "contentEncoding": "base64",
                "contentMediaType": "image/png",
                "description": f"a base64 PNG or JPEG of {w}x{h} (width x height), "
                f"{'gray' if c == 1 else 'RGB'}; a data: URL prefix is allowed",
            }
        )
    forms.append({**TypeAdapter(raw).json_schema(), "title": "raw array"})
    return {
        "anyOf": forms,
        "description": "one example: raw values in one of the model's layouts "
        "(the bundle's normalization is applied), a base64 image, or raw float32 bytes",
    }


@dataclass(frozen=True)
class Operation:
    """One REST operation: where it lives, what it takes and what it answers."""

    name: str
    path: str
    methods: tuple[str, ...]
    summary: str
    request: str | None  # the media type of the body; None: no body
    response: str  # component name of the 200 body
    npy: bool = False  # also takes an application/x-npy body and answers one when asked


OPERATIONS: tuple[Operation, ...] = (
    Operation("embed", "/embed", ("POST",), "Inputs -> embeddings", _JSON, "EmbedResponse", True),
    Operation(
        "reconstruct",
        "/reconstruct",
        ("POST",),
        "Inputs -> decoder(encoder(inputs)), in model space",
        _JSON,
        "ReconstructResponse",
    ),
    Operation(
        "generate",
        "/generate",
        ("POST",),
        "Decoded samples of the prior, deterministic for a seed",
        _JSON,
        "GenerateResponse",
    ),
    Operation(
        "embed_files",
        "/embed/files",
        ("POST",),
        "Image files (multipart) -> embeddings",
        _FORM,
        "EmbedResponse",
    ),
    Operation(
        "info",
        "/info",
        ("GET", "POST"),
        "Manifest summary, providers, limits",
        None,
        "Info",
    ),
    Operation(
        "drift", "/drift", ("GET", "POST"), "The drift monitor's latest report", None, "Drift"
    ),
)


class ErrorBody(BaseModel):
    """Every 4xx and 5xx (the Open Inference Protocol's ``error`` key, and a code)."""

    model_config = ConfigDict(extra="forbid")
    error: str = Field(description="what was wrong, in one line")
    error_type: Literal[tuple(t.value for t in ErrorType)]  # type: ignore[valid-type]


class Limits(BaseModel):
    max_items: int
    max_generate: int
    max_body_bytes: int


class Info(BaseModel):
    """``GET /info``; more keys than these are listed (manifest, metrics, files)."""

    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    latent_dim: int
    input: dict[str, Any]
    providers: list[str]
    limits: Limits
    encodings: list[str]
    batching: dict[str, Any]


class Drift(BaseModel):
    """``GET /drift``: the statistics of the latest window against their thresholds
    (null while warming up), or ``disabled``."""

    model_config = ConfigDict(extra="allow")
    state: Literal[(*STATES, "disabled")]  # type: ignore[valid-type]


# Statuses every operation may answer, besides 200 (401 only when an API key is set).
_ERRORS = {
    "POST": (
        ErrorType.VALIDATION,
        ErrorType.PAYLOAD_TOO_LARGE,
        ErrorType.UNSUPPORTED_MEDIA_TYPE,
        ErrorType.INTERNAL,
    ),
    "GET": (ErrorType.INTERNAL,),
}
_STATUS_TEXT = {
    400: "The request is malformed, breaks the schema, or its values are unusable "
    "(error_type says which)",
    401: "Missing or wrong API key",
    413: "The body is larger than SCULPT_REQUEST_MAX_BYTES",
    415: "Wrong Content-Type",
    500: "A server bug (logged with its traceback)",
}


class Contract:
    """The request models and the OpenAPI document of one app (its bundle and limits)."""

    def __init__(self, app: EmbeddingApp, *, auth: bool = False) -> None:
        spec = app.spec
        self.auth = auth
        self.layouts = [tuple(s) for s in accepted_layouts(spec)]
        self.numel = math.prod(spec.shape)
        self.latent_dim = app.bundle.manifest.latent_dim
        self.max_items = app.limits.max_items
        self.max_generate = app.limits.max_generate
        self.images = (
            spec.modality == "image" and len(spec.shape) == 3 and spec.shape[0] in PIL_MODES
        )
        self.shape = tuple(spec.shape)
        self.models = self._request_models(spec)
        self.responses = self._response_models()
        # Commas a valid body can hold: every value after the first in a container has one.
        embed_commas = self.max_items * (self.numel + _ITEM_OVERHEAD_COMMAS) + _ENVELOPE_COMMAS
        self.max_commas = {
            "embed": embed_commas,
            "reconstruct": embed_commas,
            "generate": self.latent_dim + _ENVELOPE_COMMAS,
        }
        self.title = f"sculpt: {app.bundle.manifest.name}"
        self.version = app.bundle.manifest.version

    def _encoding(self) -> Any:
        return Literal[tuple(ENCODINGS)]  # type: ignore[valid-type]

    def _request_models(self, spec: Any) -> dict[str, type[BaseModel]]:
        raw = _raw_array_model(self.layouts, self.numel)
        item = Annotated[
            Any,
            PlainValidator(_ItemValidator(self.layouts, self.images, raw)),
            WithJsonSchema(_item_schema(self.layouts, self.images, raw, spec)),
        ]
        inputs = Annotated[
            list[item],  # type: ignore[valid-type]
            Field(
                min_length=1,
                max_length=self.max_items,
                description=f"1 to {self.max_items} examples (SCULPT_REQUEST_MAX_ITEMS)",
            ),
        ]
        encoding = (self._encoding(), Field("float32", description="the embeddings' format"))
        outputs = tuple(f for f in OUTPUT_FORMATS if f != "png" or self.images)
        keys = Literal[tuple(str(d) for d in range(self.latent_dim))]  # type: ignore[valid-type]
        return {
            "embed": create_model(
                "EmbedRequest", __config__=_STRICT, inputs=(inputs, ...), encoding=encoding
            ),
            "reconstruct": create_model(
                "ReconstructRequest", __config__=_STRICT, inputs=(inputs, ...)
            ),
            "generate": create_model(
                "GenerateRequest",
                __config__=_STRICT,
                n=(
                    integer(ge=1, le=self.max_generate),
                    Field(description="samples (SCULPT_REQUEST_MAX_SAMPLES at most)"),
                ),
                seed=(integer(ge=0, le=INT64_MAX), 0),
                fixed=(
                    dict[keys, Value] | None,  # type: ignore[valid-type]
                    Field(None, description="latent dimension (a decimal string) -> value"),
                ),
                output=(
                    Annotated[Literal[outputs], BeforeValidator(self._png_needs_images)],  # type: ignore[valid-type]
                    "array",
                ),
            ),
            "embed_files": create_model(
                "EmbedFilesForm",
                __config__=_STRICT,
                files=(
                    Annotated[list[bytes], Field(min_length=1, max_length=self.max_items)],
                    Field(description="PNG or JPEG files, in the multipart field 'files'"),
                ),
                encoding=encoding,
            ),
        }

    def _response_models(self) -> list[type[BaseModel]]:
        """For the document only: the handlers write the core's results as they are."""
        dim = self.latent_dim
        latent_row = Annotated[list[float], Field(min_length=dim, max_length=dim)]
        sample = nested_type(self.shape, float)
        png = Annotated[str, Field(json_schema_extra={"format": "byte"})]
        rows = Field(min_length=1, max_length=self.max_items)
        return [
            create_model(
                "EmbedResponse",
                embeddings=(Annotated[list[latent_row], rows], ...),  # type: ignore[valid-type]
                encoding=(self._encoding(), ...),
            ),
            create_model(
                "ReconstructResponse",
                outputs=(Annotated[list[sample], rows], ...),  # type: ignore[valid-type]
            ),
            create_model(
                "GenerateResponse",
                latents=(Annotated[list[latent_row], Field(min_length=1)], ...),  # type: ignore[valid-type]
                samples=(
                    list[sample] | list[png],  # type: ignore[valid-type]
                    Field(description="arrays, or base64 PNGs for output 'png'"),
                ),
                seed=(int, ...),
            ),
            Info,
            Drift,
            ErrorBody,
        ]

    # -- validation -------------------------------------------------------------------------

    def _png_needs_images(self, value: Any) -> Any:
        """Say why 'png' is not in this bundle's enum (the enum alone would not)."""
        if value == "png" and not self.images:
            raise PydanticCustomError(
                "output",
                "'png' needs an image model with 1 or 3 channels; this one takes {shape}",
                {"shape": _shape_str(self.shape)},
            )
        return value

    def check_size(self, name: str, body: bytes) -> None:
        """400 for a body with more JSON values than any valid one: a cheap count, no parse.
        (A 400 like any schema violation: it is the structure that is too big, whatever the
        byte count; the byte limit is the guard's 413.)"""
        commas = body.count(b",")
        if commas > self.max_commas[name]:
            raise ApiError(
                ErrorType.VALIDATION,
                f"the body holds about {commas + 1} JSON values, more than any valid request "
                f"(at most {self.max_items} inputs of {self.numel} values, or {self.latent_dim} "
                "fixed dimensions); split the batch",
            )

    def parse_json(self, name: str, body: bytes) -> Any:
        """The validated request model of operation ``name``, or an ApiError (400)."""
        self.check_size(name, body)
        try:
            return self.models[name].model_validate_json(body)
        except ValidationError as exc:
            raise self._validation_error(exc) from None

    def parse_form(self, fields: dict[str, Any]) -> Any:
        """The multipart form of /embed/files (files as bytes, text fields as str)."""
        try:
            return self.models["embed_files"].model_validate(fields)
        except ValidationError as exc:
            raise self._validation_error(exc) from None

    @staticmethod
    def _validation_error(exc: ValidationError) -> ApiError:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            reason = exc.errors()[0]["msg"]
            return ApiError(ErrorType.INVALID_JSON, f"the body is not valid JSON: {reason}")
        return ApiError(ErrorType.VALIDATION, format_validation_error(exc))

    # -- documentation ----------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of this contract (``/docs.json``)."""
        models = [(m, "validation") for m in self.models.values()]
        models += [(m, "validation") for m in self.responses]
        _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
        components: dict[str, Any] = {"schemas": defs.get("$defs", {})}
        if self.auth:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        paths: dict[str, Any] = {}
        for op in OPERATIONS:
            for method in op.methods:
                paths.setdefault(op.path, {})[method.lower()] = self._operation(op, method)
        return {
            "openapi": "3.1.0",
            "info": {
                "title": self.title,
                "version": self.version,
                "description": "Embeddings, reconstructions and prior samples of one verified "
                "bundle. Every error is {error, error_type}.",
            },
            "paths": paths,
            "components": components,
        }

    def _operation(self, op: Operation, method: str) -> dict[str, Any]:
        def ref(name: str) -> dict[str, Any]:
            return {"$ref": f"#/components/schemas/{name}"}

        out: dict[str, Any] = {
            "operationId": f"{op.name}_{method.lower()}" if len(op.methods) > 1 else op.name,
            "summary": op.summary,
            "responses": {
                "200": {"description": "OK", "content": {_JSON: {"schema": ref(op.response)}}}
            },
        }
        errors: tuple[ErrorType, ...] = _ERRORS["POST" if op.request else "GET"]
        if self.auth:
            errors = (*errors, ErrorType.UNAUTHORIZED)
            out["security"] = [{"bearer": []}]
        for status in sorted({STATUS[e] for e in errors}):
            out["responses"][str(status)] = {
                "description": _STATUS_TEXT[status],
                "content": {_JSON: {"schema": ref("ErrorBody")}},
            }
        if op.request is not None:
            model = self.models[op.name].__name__
            content: dict[str, Any] = {"schema": ref(model)}
            if op.request == _FORM:
                # What each part holds: generators and clients send image files, not any bytes.
                content["encoding"] = {"files": {"contentType": "image/png, image/jpeg"}}
            out["requestBody"] = {"required": True, "content": {op.request: content}}
        if op.npy:
            self._npy(out)
        return out

    def _npy(self, out: dict[str, Any]) -> None:
        """The .npy forms of an operation: the body, its ``encoding`` query, the answer."""
        out["requestBody"]["content"][NPY] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": f"an .npy file (numpy.save) of raw values, shape (B, "
                f"{', '.join(map(str, self.shape))}), a real dtype (float32: no copy); "
                "object arrays are refused. The embeddings' format goes in the query: "
                f"?encoding={'|'.join(ENCODINGS)} (default float32)",
            }
        }
        out["responses"]["200"]["content"][NPY] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "with Accept: application/x-npy: the embeddings as an .npy file "
                f"(B, {self.latent_dim}), in the encoding's dtype",
            }
        }
