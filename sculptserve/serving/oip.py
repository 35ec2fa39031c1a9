"""The Open Inference Protocol (KServe v2) view of a bundle, shared by its transports.

Transport-free: model names and metadata, the datatype table, tensor bytes <-> arrays, the
checks of an input tensor against its model, and :func:`infer`, which runs a model through
:class:`~sculptserve.serving.core.EmbeddingApp` (its validation, limits, micro-batcher and drift
monitor, as ``/embed`` does). The gRPC servicer (:mod:`sculptserve.serving.grpc.inference`)
only translates messages to these calls. Every client mistake is a
:class:`~sculptserve.serving.errors.PayloadError` (:class:`ModelNotFound` for an unknown model
or version: NOT_FOUND / 404 rather than INVALID_ARGUMENT / 400).

Models of a bundle named ``NAME`` (tensor names from the bundle's ONNX graphs):

- ``NAME``: input ``encoder.input_name``, the raw inputs (before the bundle's normalization,
  as in /embed), FP32 ``[-1, *input shape]``; output ``encoder.output_name``, the embeddings,
  FP32 ``[-1, latent_dim]``, or in the datatype of the request parameter ``encoding``
  (``float16`` -> FP16, ``uint8`` -> UINT8, ``int8`` -> INT8: codes through the prior's CDF);
- ``NAME-decoder``: input ``decoder.input_name``, latents FP32 ``[-1, latent_dim]``; output
  ``decoder.output_name``, model-space outputs FP32 ``[-1, *input shape]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np

from sculptserve.serving.errors import PayloadError

if TYPE_CHECKING:
    from sculptserve.serving.core import EmbeddingApp

__all__ = [
    "DATATYPES",
    "DECODER_SUFFIX",
    "EXTENSIONS",
    "PLATFORM",
    "SERVER_NAME",
    "ModelMetadata",
    "ModelNotFound",
    "TensorMetadata",
    "array_from_bytes",
    "array_to_bytes",
    "check_input",
    "datatype_of",
    "dtype_of",
    "infer",
    "model_metadata",
    "model_names",
    "server_metadata",
]

SERVER_NAME = "sculptserve"
# The protocol's optional extensions the service implements (REST's binary tensor bodies).
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "onnxruntime_onnx"  # Triton's name for what runs the graphs
DECODER_SUFFIX = "-decoder"
ANY = -1  # a dimension of any size in metadata shapes

# The protocol's numeric datatypes, little-endian as on the wire. BYTES (length-prefixed
# strings) has no fixed item size and no model here takes it, so it is not in the table.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"),
        ("UINT8", "<u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "<i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    )
}
_DATATYPE_OF = {(dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items()}
_ENCODING_PARAMETER = "encoding"


class ModelNotFound(PayloadError):
    """The request names a model (or version) this service does not serve."""


@dataclass(frozen=True)
class TensorMetadata:
    """One input or output of a model: ``shape`` has -1 for a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelMetadata:
    """A model's metadata, as the protocol's model metadata response has it."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def output(self, name: str) -> TensorMetadata:
        """The output ``name``; an unknown one is a PayloadError listing the outputs."""
        return _by_name(self.outputs, name, f"model '{self.name}' has no output")


# --- the two models -------------------------------------------------------------------------


def _encoder_metadata(app: EmbeddingApp) -> tuple[TensorMetadata, TensorMetadata]:
    graph = app.bundle.manifest.onnx.encoder
    shape = tuple(int(d) for d in app.runtime.input_shape)
    return (
        TensorMetadata(graph.input_name, "FP32", (ANY, *shape)),
        TensorMetadata(graph.output_name, "FP32", (ANY, app.runtime.latent_dim)),
    )


def _decoder_metadata(app: EmbeddingApp) -> tuple[TensorMetadata, TensorMetadata]:
    graph = app.bundle.manifest.onnx.decoder
    shape = tuple(int(d) for d in app.runtime.input_shape)
    return (
        TensorMetadata(graph.input_name, "FP32", (ANY, app.runtime.latent_dim)),
        TensorMetadata(graph.output_name, "FP32", (ANY, *shape)),
    )


def _run_encoder(app: EmbeddingApp, x: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    encoding = parameters.get(_ENCODING_PARAMETER, "float32")
    if not isinstance(encoding, str):
        raise PayloadError(
            f"parameter '{_ENCODING_PARAMETER}' must be a string (float32, float16, uint8 or "
            f"int8), got {encoding!r}"
        )
    return app.embed(x, encoding).embeddings  # /embed's path: batcher, drift monitor


def _run_decoder(app: EmbeddingApp, z: np.ndarray, parameters: Mapping[str, Any]) -> np.ndarray:
    if _ENCODING_PARAMETER in parameters:
        raise PayloadError(
            f"parameter '{_ENCODING_PARAMETER}' applies to the embedding model, not the decoder"
        )
    return app.decode(z).outputs


@dataclass(frozen=True)
class _Model:
    suffix: str  # appended to the bundle name
    metadata: Callable[[EmbeddingApp], tuple[TensorMetadata, TensorMetadata]]
    run: Callable[[EmbeddingApp, np.ndarray, Mapping[str, Any]], np.ndarray]


_MODELS = (
    _Model("", _encoder_metadata, _run_encoder),
    _Model(DECODER_SUFFIX, _decoder_metadata, _run_decoder),
)


def _models(app: EmbeddingApp) -> dict[str, _Model]:
    name = app.bundle.manifest.name
    return {name + model.suffix: model for model in _MODELS}


def model_names(app: EmbeddingApp) -> tuple[str, ...]:
    """The names of the models ``app`` serves: the embedding model first, then the decoder."""
    return tuple(_models(app))


def _lookup(app: EmbeddingApp, name: str, version: str) -> _Model:
    models = _models(app)
    model = models.get(name)
    if model is None:
        raise ModelNotFound(f"unknown model {name!r}; this server has {', '.join(models)}")
    bundle_version = app.bundle.manifest.version
    if version not in ("", bundle_version):
        raise ModelNotFound(
            f"model {name!r} has no version {version!r}; its only version is {bundle_version!r}"
        )
    return model


def model_metadata(app: EmbeddingApp, name: str, version: str = "") -> ModelMetadata:
    """Metadata of model ``name`` (``version``: "" or the bundle's version), else
    :class:`ModelNotFound`."""
    return _metadata(app, name, _lookup(app, name, version))


def _metadata(app: EmbeddingApp, name: str, model: _Model) -> ModelMetadata:
    tensor_in, tensor_out = model.metadata(app)
    return ModelMetadata(
        name=name,
        versions=(app.bundle.manifest.version,),
        platform=PLATFORM,
        inputs=(tensor_in,),
        outputs=(tensor_out,),
    )


def server_metadata() -> dict[str, Any]:
    """The server metadata response: name, version, extensions."""
    try:  # as sculptserve.__version__, which the serving side does not import (the root package)
        release = version(SERVER_NAME)
    except PackageNotFoundError:  # a source tree that is not installed
        release = "0.0.0+unknown"
    return {"name": SERVER_NAME, "version": release, "extensions": list(EXTENSIONS)}


# --- tensors --------------------------------------------------------------------------------


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype of ``array``'s dtype (FP32 for float32...); ValueError if none."""
    dtype = np.asarray(array).dtype
    name = _DATATYPE_OF.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise ValueError(f"dtype {dtype} has no Open Inference Protocol datatype")
    return name


def dtype_of(datatype: str) -> np.dtype:
    """The numpy dtype of a protocol datatype; an unknown one is a PayloadError."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise PayloadError(
            f"datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}"
        )
    return dtype


def _check_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise PayloadError(f"{what} has shape {list(dims)}: every dimension must be >= 0")
    return dims


def array_from_bytes(
    datatype: str, shape: Sequence[int], raw: bytes, *, what: str = "the tensor"
) -> np.ndarray:
    """Little-endian row-major ``raw`` bytes as a read-only array of ``shape`` (no copy).

    An unknown datatype, a negative dimension or a byte count other than
    ``prod(shape) * itemsize`` is a PayloadError saying what was expected (``what`` names the
    tensor in it: "input 'x'").
    """
    dtype = dtype_of(datatype)
    dims = _check_shape(shape, what)
    needed = math.prod(dims) * dtype.itemsize  # Python ints: no overflow for absurd shapes
    if len(raw) != needed:
        raise PayloadError(
            f"{what} holds {len(raw)} bytes but shape {list(dims)} of {datatype} needs {needed}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def array_to_bytes(array: np.ndarray) -> bytes:
    """An array as little-endian row-major bytes (the wire form of a tensor)."""
    arr = np.ascontiguousarray(array)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _by_name(tensors: Sequence[TensorMetadata], name: str, what: str) -> TensorMetadata:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise PayloadError(f"{what} {name!r}; expected {', '.join(repr(t.name) for t in tensors)}")


def check_input(
    model: ModelMetadata, name: str, datatype: str, shape: Sequence[int]
) -> TensorMetadata:
    """The model's input ``name``, after checking that ``datatype`` and ``shape`` fit it
    (before any data is read); a PayloadError names what differs."""
    spec = _by_name(model.inputs, name, f"model '{model.name}' has no input")
    if datatype != spec.datatype:
        raise PayloadError(
            f"input '{name}' has datatype {datatype!r}; model '{model.name}' expects "
            f"{spec.datatype}"
        )
    dims = _check_shape(shape, f"input '{name}'")
    fits = len(dims) == len(spec.shape) and all(
        want in (ANY, got) for want, got in zip(spec.shape, dims, strict=True)
    )
    if not fits:
        raise PayloadError(
            f"input '{name}' has shape {list(dims)}; model '{model.name}' expects "
            f"{list(spec.shape)} (-1: any size)"
        )
    return spec


def infer(
    app: EmbeddingApp,
    name: str,
    inputs: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
    version: str = "",
) -> dict[str, np.ndarray]:
    """Run model ``name`` on ``inputs`` (input name -> array): output name -> array.

    Every input of the model must be given, with its datatype and shape (see
    :func:`check_input`); the values then get the app's own checks (NaN, limits). The
    embedding model goes through :meth:`EmbeddingApp.embed` (micro-batcher, drift monitor),
    the decoder through :meth:`EmbeddingApp.decode`.
    """
    model = _lookup(app, name, version)
    meta = _metadata(app, name, model)
    missing = [t.name for t in meta.inputs if t.name not in inputs]
    if missing:
        raise PayloadError(f"model '{name}' needs input(s) {', '.join(map(repr, missing))}")
    for input_name, array in inputs.items():
        check_input(meta, input_name, datatype_of(array), array.shape)
    (tensor_in,), (tensor_out,) = meta.inputs, meta.outputs
    return {tensor_out.name: model.run(app, inputs[tensor_in.name], parameters or {})}
