"""The Open Inference Protocol (KServe v2) view of one app, shared by its REST and gRPC transports.

Transport-free and small: model names and metadata, the datatype table, tensor <-> array
conversion and the validation of a tensor's datatype, shape and byte count. REST
(:mod:`sculptserve.serving.http.oip`) and gRPC (``inference.GRPCInferenceService``) only translate
their wire forms into the calls below, so a bad tensor reads the same on both: a
:class:`~sculptserve.serving.errors.PayloadError` (400 / INVALID_ARGUMENT); an unknown model or
version is a :class:`ModelNotFound` (404 / NOT_FOUND).

Models (one app serves both; :class:`OipModels`):

- ``{bundle name}``: the encoder. Input: the bundle's input tensor (the ONNX graph's input
  name), FP32 ``[-1, *input shape]`` of raw values (the bundle's normalization is applied, as on
  ``/embed``); output: the embedding (the graph's output name), FP32 ``[-1, latent_dim]``. The
  request parameter ``encoding`` (``float32``, ``float16``, ``uint8``, ``int8``) works as on
  ``/embed``; the output's datatype follows it (FP16, UINT8, INT8).
- ``{bundle name}-decoder``: latents FP32 ``[-1, latent_dim]`` -> decoder outputs FP32
  ``[-1, *input shape]`` in model space. Generation from the prior stays on the sculpt API.

Both run through :class:`~sculptserve.serving.core.EmbeddingApp` (``embed`` and ``decode``): the
same limits, micro-batching and drift monitor as ``/embed``. A transport's request goes:

1. ``model = models.get(name, version)``  (ModelNotFound)
2. per input tensor: ``model.input_from_bytes(name, datatype, shape, raw)`` (zero-copy
   ``np.frombuffer``) or ``model.input_from_values(name, datatype, shape, values)``
   (PayloadError: unknown input, datatype, shape, byte or value count);
3. ``outputs = model.infer(tensors, parameters, requested)``  -> list of :class:`Tensor`;
   ``tensor_bytes(t.array)`` gives an output's raw little-endian bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np

from sculptserve.serving.errors import PayloadError

if TYPE_CHECKING:
    from sculptserve.serving.core import EmbeddingApp

__all__ = [
    "DATATYPES",
    "DECODER_SUFFIX",
    "PLATFORM",
    "SERVER_NAME",
    "ModelNotFound",
    "OipModel",
    "OipModels",
    "Tensor",
    "TensorSpec",
    "array_from_bytes",
    "array_from_values",
    "datatype_of",
    "server_metadata",
    "tensor_bytes",
]

SERVER_NAME = "sculptserve"
PLATFORM = "onnxruntime_onnx"  # Triton's name for the platform, which clients may branch on
DECODER_SUFFIX = "-decoder"
ANY = -1  # a dimension of any size (the batch axis) in metadata shapes

# OIP datatype -> the little-endian numpy dtype of its raw bytes (the binary extension and
# gRPC's raw contents are little-endian, row-major). BYTES (length-prefixed strings) has no
# fixed width: no model here takes or answers it.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"),
        ("UINT8", "u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    )
}
# numpy kinds that a value list may hold for a datatype's kind: JSON's integers are numbers too
_VALUE_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "fiu"}
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings"}


class ModelNotFound(LookupError):
    """No model (or no such version of it) by that name: REST 404, gRPC NOT_FOUND."""


def datatype_of(dtype: np.dtype | type) -> str:
    """The OIP datatype of a numpy dtype (byte order aside)."""
    dt = np.dtype(dtype).newbyteorder("<")
    for name, known in DATATYPES.items():
        if known == dt:
            return name
    raise ValueError(f"numpy dtype {np.dtype(dtype)} has no Open Inference Protocol datatype")


def _dtype(datatype: str, name: str) -> np.dtype:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise PayloadError(
            f"tensor '{name}': unknown datatype {datatype!r}; known: {', '.join(DATATYPES)}"
        )
    return dtype


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    if not all(isinstance(d, int | np.integer) and not isinstance(d, bool) for d in shape) or any(
        d < 0 for d in shape
    ):
        raise PayloadError(
            f"tensor '{name}': shape {list(shape)} must be a list of non-negative integers"
        )
    return tuple(int(d) for d in shape)


def array_from_bytes(
    datatype: str, shape: Sequence[int], data: bytes | bytearray | memoryview, name: str = "input"
) -> np.ndarray:
    """Raw little-endian row-major bytes -> an array of ``shape``, without a copy
    (``np.frombuffer``: the array is read-only and views ``data``). The byte count must be
    exactly what ``datatype`` and ``shape`` need."""
    dtype = _dtype(datatype, name)
    dims = _check_shape(shape, name)
    expected = math.prod(dims) * dtype.itemsize
    got = memoryview(data).nbytes
    if got != expected:
        raise PayloadError(
            f"tensor '{name}': {got} bytes of data, but {datatype} {list(dims)} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def array_from_values(
    datatype: str, shape: Sequence[int], values: Sequence[Any] | np.ndarray, name: str = "input"
) -> np.ndarray:
    """A value list (flat or nested row-major, as OIP's JSON ``data``; or gRPC's typed
    contents) -> an array of ``shape`` in ``datatype``'s dtype. The count must match."""
    dtype = _dtype(datatype, name)
    dims = _check_shape(shape, name)
    try:
        arr = np.asarray(values)
    except ValueError:  # numpy refuses ragged nesting
        raise PayloadError(
            f"tensor '{name}': data is ragged (nested lists of different lengths)"
        ) from None
    if arr.dtype.kind not in _VALUE_KINDS[dtype.kind]:
        raise PayloadError(
            f"tensor '{name}': data of {datatype} must hold {_kind_name(dtype.kind)}, got "
            f"{_kind_name(arr.dtype.kind)}"
        )
    if arr.size != math.prod(dims):
        raise PayloadError(
            f"tensor '{name}': {arr.size} values of data, but shape {list(dims)} needs "
            f"{math.prod(dims)}"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf: the core reports it
        return arr.astype(dtype, copy=False).reshape(dims)


def _kind_name(kind: str) -> str:
    """What values of a numpy dtype kind are, in words (object: JSON null, mixed types...)."""
    return _KIND_NAMES.get(kind, "mixed or non-numeric values")


def tensor_bytes(array: np.ndarray) -> memoryview:
    """An output's raw bytes: little-endian, row-major (no copy when it already is)."""
    dt = array.dtype.newbyteorder("<")
    return memoryview(np.ascontiguousarray(array, dtype=dt)).cast("B")


@dataclass(frozen=True)
class TensorSpec:
    """A model's input or output as metadata states it; ``-1`` is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check(self, datatype: str, shape: Sequence[int]) -> tuple[int, ...]:
        """The request's declared ``datatype`` and ``shape``, checked against this spec before
        any data is read (a wrong shape must not size a buffer)."""
        if datatype != self.datatype:
            raise PayloadError(
                f"input '{self.name}' has datatype {datatype}, expected {self.datatype}"
            )
        dims = _check_shape(shape, self.name)
        fits = len(dims) == len(self.shape) and all(
            want in (ANY, got) for want, got in zip(self.shape, dims, strict=True)
        )
        if not fits:
            raise PayloadError(
                f"input '{self.name}' has shape {list(dims)}, expected {list(self.shape)} "
                "(-1: any size >= 1)"
            )
        if dims[0] == 0:
            raise PayloadError(f"input '{self.name}' batch is empty: send at least one example")
        return dims


@dataclass(frozen=True)
class Tensor:
    """A named array: a request's input once decoded, or a response's output."""

    name: str
    array: np.ndarray

    @property
    def datatype(self) -> str:
        return datatype_of(self.array.dtype)

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


# A model's computation: (its one input array, the request parameters) -> its one output array
Run = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]


@dataclass(frozen=True)
class OipModel:
    """One served model: its metadata, the request parameters it takes, and how it runs."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    run: Run = field(repr=False, compare=False)
    parameters: Mapping[str, type] = field(default_factory=dict)  # name -> value type

    def metadata(self) -> dict[str, Any]:
        """The model metadata response (REST ``GET /v2/models/{name}``, gRPC ModelMetadata)."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }

    def input_spec(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise PayloadError(
            f"model '{self.name}' has no input '{name}'; its input is "
            + ", ".join(f"'{s.name}'" for s in self.inputs)
        )

    def input_from_bytes(
        self, name: str, datatype: str, shape: Sequence[int], data: bytes | memoryview
    ) -> Tensor:
        """An input tensor from raw bytes (REST binary extension, gRPC raw_input_contents)."""
        dims = self.input_spec(name).check(datatype, shape)
        return Tensor(name, array_from_bytes(datatype, dims, data, name))

    def input_from_values(
        self, name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]
    ) -> Tensor:
        """An input tensor from a value list (REST JSON ``data``, gRPC typed contents)."""
        dims = self.input_spec(name).check(datatype, shape)
        return Tensor(name, array_from_values(datatype, dims, values, name))

    def infer(
        self,
        inputs: Sequence[Tensor],
        parameters: Mapping[str, Any] | None = None,
        requested: Sequence[str] | None = None,
    ) -> list[Tensor]:
        """Run the model on one request: every input exactly once, known parameters only,
        and the requested outputs (None: all), in the model's order."""
        names = [t.name for t in inputs]
        expected = [s.name for s in self.inputs]
        if sorted(names) != sorted(expected):
            raise PayloadError(f"model '{self.name}' takes the inputs {expected}, got {names}")
        self._check_parameters(parameters or {})
        wanted = list(dict.fromkeys(requested)) if requested else [s.name for s in self.outputs]
        unknown = [n for n in wanted if n not in {s.name for s in self.outputs}]
        if unknown:
            raise PayloadError(
                f"model '{self.name}' has no output '{unknown[0]}'; its outputs: "
                + ", ".join(f"'{s.name}'" for s in self.outputs)
            )
        out = self.run(inputs[0].array, parameters or {})
        return [Tensor(name, out) for name in wanted]

    def _check_parameters(self, parameters: Mapping[str, Any]) -> None:
        for key, value in parameters.items():
            kind = self.parameters.get(key)
            if kind is None:
                known = ", ".join(f"'{k}'" for k in self.parameters) or "none"
                raise PayloadError(
                    f"model '{self.name}' does not take the parameter '{key}' (it takes: {known})"
                )
            if not isinstance(value, kind):
                raise PayloadError(
                    f"parameter '{key}' must be a {kind.__name__}, got {type(value).__name__}"
                )


class OipModels:
    """The models of one app (its encoder and decoder), by name."""

    def __init__(self, app: EmbeddingApp) -> None:
        manifest = app.bundle.manifest
        graphs = manifest.onnx
        item = tuple(int(d) for d in manifest.input.shape)
        latent = (ANY, manifest.latent_dim)
        encoder = OipModel(
            name=manifest.name,
            version=manifest.version,
            inputs=(TensorSpec(graphs.encoder.input_name, "FP32", (ANY, *item)),),
            outputs=(TensorSpec(graphs.encoder.output_name, "FP32", latent),),
            run=lambda x, params: app.embed(x, params.get("encoding", "float32")).embeddings,
            parameters={"encoding": str},
        )
        decoder = OipModel(
            name=manifest.name + DECODER_SUFFIX,
            version=manifest.version,
            inputs=(TensorSpec(graphs.decoder.input_name, "FP32", latent),),
            outputs=(TensorSpec(graphs.decoder.output_name, "FP32", (ANY, *item)),),
            run=lambda z, params: app.decode(z).outputs,
        )
        self.models: dict[str, OipModel] = {m.name: m for m in (encoder, decoder)}

    def __iter__(self) -> Any:
        return iter(self.models.values())

    def get(self, name: str, version: str | None = None) -> OipModel:
        """The model ``name``; ``version`` None or empty: the one served."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(
                f"no model '{name}'; models: " + ", ".join(f"'{n}'" for n in self.models)
            )
        if version and version != model.version:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}'; versions: '{model.version}'"
            )
        return model


def server_metadata(extensions: Sequence[str]) -> dict[str, Any]:
    """The server metadata response; ``extensions``: the transport's protocol extensions
    (REST: ``binary_tensor_data``)."""
    # from the distribution, not `sculptserve.__version__`: the serving side does not import
    # the root package (tests/test_architecture.py)
    try:
        version = metadata.version("sculptserve")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        version = "0.0.0+unknown"
    return {"name": SERVER_NAME, "version": version, "extensions": list(extensions)}
