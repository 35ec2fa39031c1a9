"""Request payloads -> model arrays: the inputs of /embed, /reconstruct and gRPC.

Pure functions on numpy arrays: no web framework, no ONNX Runtime, no torch. The REST service
and the gRPC server both call these, so a client error looks the same on either: a
:class:`PayloadError` whose message names the item and says what was expected. The service
maps it to HTTP 400 / gRPC INVALID_ARGUMENT.

Inputs (:func:`decode_inputs`)
------------------------------
Each item of a request is one example, in one of three forms:

- a **nested list** of numbers shaped like one example. Accepted layouts: ``input.shape``
  itself (``[C, H, W]`` or ``[F]``); for images also ``[H, W]`` when C == 1 and channel-last
  ``[H, W, C]`` (transposed to ``[C, H, W]``; when C == H == W the channel-first reading wins);
- a **base64 string** of a PNG or JPEG (image models only; a ``data:image/...;base64,`` prefix
  is allowed). It is converted to ``L`` or ``RGB`` as the model's channels require and must
  already be W x H: a wrong size is rejected, never resized, because resampling silently
  changes what the model sees. In-process callers (a multipart upload, gRPC bytes) may pass
  the file's ``bytes`` instead of a string. The size in the file's header is checked before
  any pixel is decoded (see :func:`_open_image`), so a small file declaring a huge image costs
  no more than its header;
- a **raw array** ``{"b64": "...", "dtype": "float32", "shape": [...]}`` of little-endian
  float32 bytes, in any of the layouts above: the compact form for any modality.

Value spaces. Nested lists and raw arrays hold **raw data**, the values the training data held
before normalization; they get the manifest's ``(x - shift) / scale`` (scalars, or one value
per column for tabular data / per channel for images). PNG/JPEG pixels ``p`` in 0..255 map to
``lo + (hi - lo) * p / 255`` with ``[lo, hi] = input.value_range`` (``[0, 1]`` when absent),
which is exactly what training does with stored 8-bit images (``x / 255``) and with the
procedural ``shapes`` masks (0/1 stored, 0/255 in a PNG). Pass ``normalize=False`` to treat
nested lists and raw arrays as model-space inputs instead (e.g. a ``/reconstruct`` output sent
back in).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from sculptserve.bundle.schema import InputSpec
from sculptserve.serving.errors import PayloadError

__all__ = [
    "accepted_layouts",
    "check_model_input",
    "decode_batch",
    "decode_inputs",
    "is_identity",
    "parse_fixed_dims",
    "raw_items",
]


_F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------
# Model-space arrays
# ---------------------------------------------------------------------------------------------


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _first_bad_item(x: np.ndarray) -> str | None:
    """'item i: holds NaN at index [..]' for the first non-finite item, plus a count."""
    flat = x.reshape(len(x), -1)
    bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    if bad_rows.size == 0:
        return None
    i = int(bad_rows[0])
    pos = int(np.flatnonzero(~np.isfinite(flat[i]))[0])
    value = flat[i, pos]
    where = shape_str(np.unravel_index(pos, x.shape[1:]))
    kind = "NaN" if np.isnan(value) else ("Inf" if value > 0 else "-Inf")
    more = f" ({bad_rows.size} items hold NaN/Inf in all)" if bad_rows.size > 1 else ""
    return f"item {i}: holds {kind} at index {where}; every value must be finite{more}"


def check_model_input(x: Any, input_shape: Sequence[int], *, what: str = "input") -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(B, *input_shape)`` array with B >= 1, all finite.

    Real integer and float dtypes are cast to float32; anything else (bool, complex, strings,
    objects), a missing batch axis, a wrong shape, an empty batch or NaN/Inf is a
    :class:`PayloadError`. ``what`` names the array in messages ("input", "latent").
    """
    shape = tuple(int(d) for d in input_shape)
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise PayloadError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim == len(shape) and arr.shape == shape:
        raise PayloadError(
            f"{what} has shape {shape_str(arr.shape)}, one example without a batch axis; "
            f"expected (B, {', '.join(map(str, shape))})"
        )
    if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
        raise PayloadError(
            f"{what} has shape {shape_str(arr.shape)}, expected "
            f"(B, {', '.join(map(str, shape))}) with B >= 1"
        )
    if arr.shape[0] == 0:
        raise PayloadError(f"{what} batch is empty: send at least one example")
    with np.errstate(over="ignore", invalid="ignore"):  # float64 > 3.4e38 -> inf, reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    problem = _first_bad_item(out)
    if problem is not None:
        raise PayloadError(f"{what} {problem}")
    return out


# ---------------------------------------------------------------------------------------------
# Request items -> model input
# ---------------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:[\w.+/-]*;base64,", re.IGNORECASE)
_PIL_FORMATS = ("PNG", "JPEG")
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow's convert("L") would clip
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
# Decompressed PNG text metadata (tEXt/zTXt/iTXt) Pillow may hold for one image. Pillow parses
# these chunks while reading the header and allows 64 MiB by default: a 63 KB PNG of zTXt
# chunks cost +65 MB before any size check could run. The model never reads metadata.
PNG_TEXT_BUDGET = 2**20
PIL_MODES = {1: "L", 3: "RGB"}  # channels -> the mode a PNG/JPEG is converted to
_RAW_KEYS = frozenset({"b64", "dtype", "shape"})
_RAW_DTYPES = {"float32": np.dtype("<f4"), "<f4": np.dtype("<f4"), "f4": np.dtype("<f4")}


@dataclass(frozen=True)
class _Plan:
    """Everything decode_inputs needs from an InputSpec, computed once per request."""

    shape: tuple[int, ...]
    image: bool
    layouts: dict[tuple[int, ...], Callable[[np.ndarray], np.ndarray]]
    shift: np.ndarray  # broadcastable to shape
    scale: np.ndarray
    pixel_lo: float
    pixel_hi: float
    pil_mode: str | None


def accepted_layouts(spec: InputSpec) -> list[list[int]]:
    """The example shapes a nested list or raw array may have, the model's own first."""
    return [list(s) for s in _layouts(tuple(spec.shape), spec.modality == "image")]


def _layouts(
    shape: tuple[int, ...], image: bool
) -> dict[tuple[int, ...], Callable[[np.ndarray], np.ndarray]]:
    """Accepted example shape -> function to the model layout (dict order = preference)."""
    out: dict[tuple[int, ...], Callable[[np.ndarray], np.ndarray]] = {shape: lambda a: a}
    if image and len(shape) == 3:
        c, h, w = shape
        if c == 1:
            out.setdefault((h, w), lambda a: a[None])
        out.setdefault((h, w, c), lambda a: a.transpose(2, 0, 1))
    return out


def _norm_param(spec: InputSpec, key: str) -> np.ndarray:
    """shift or scale, shaped to broadcast over one example (per column / per channel)."""
    shape = tuple(spec.shape)
    if key not in spec.normalization:
        raise ValueError(
            f"the bundle's input.normalization has no {key!r}: it cannot map raw inputs to "
            "model inputs; re-export the bundle"
        )
    try:
        arr = np.asarray(spec.normalization[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"the bundle's input.normalization.{key} is not numeric; re-export the bundle"
        ) from None
    if arr.ndim == 1 and arr.size == 1:
        arr = arr.reshape(())
    if arr.ndim == 1 and arr.size == shape[0]:  # per column (tabular) or per channel (image)
        arr = arr.reshape(shape[0], *([1] * (len(shape) - 1)))
    elif arr.ndim != 0:
        raise ValueError(
            f"the bundle's input.normalization.{key} has {arr.size} values but input.shape is "
            f"{list(shape)}: expected a scalar or {shape[0]} values; re-export the bundle"
        )
    if not np.isfinite(arr).all() or (key == "scale" and (arr <= 0).any()):
        raise ValueError(
            f"the bundle's input.normalization.{key} must be finite"
            + (" and > 0" if key == "scale" else "")
            + "; re-export the bundle"
        )
    return arr


def _plan(spec: InputSpec) -> _Plan:
    shape = tuple(int(d) for d in spec.shape)
    image = spec.modality == "image"
    lo, hi = (spec.value_range or (0.0, 1.0))[:2]
    # PNG/JPEG carry 1 (L) or 3 (RGB) channels; the graph's channel count decides
    mode = PIL_MODES.get(shape[0]) if image and len(shape) == 3 else None
    return _Plan(
        shape=shape,
        image=image,
        layouts=_layouts(shape, image),
        shift=_norm_param(spec, "shift"),
        scale=_norm_param(spec, "scale"),
        pixel_lo=float(lo),
        pixel_hi=float(hi),
        pil_mode=mode,
    )


def _layout_error(i: int, got: Sequence[int], plan: _Plan, form: str) -> PayloadError:
    accepted = " or ".join(shape_str(s) for s in plan.layouts)
    return PayloadError(
        f"item {i}: {form} has shape {shape_str(got)}, expected {accepted}"
        + (" (channel-first [C, H, W], or channel-last [H, W, C])" if plan.image else "")
    )


def _to_model_layout(i: int, arr: np.ndarray, plan: _Plan, form: str) -> np.ndarray:
    to_model = plan.layouts.get(arr.shape)
    if to_model is None:
        raise _layout_error(i, arr.shape, plan, form)
    return to_model(arr)


def _from_nested(i: int, item: Any, plan: _Plan) -> tuple[np.ndarray, bool]:
    try:
        arr = np.asarray(item)
    except ValueError:  # numpy refuses ragged nesting
        raise PayloadError(
            f"item {i}: nested list is ragged (rows of different lengths); expected shape "
            + " or ".join(shape_str(s) for s in plan.layouts)
        ) from None
    kind = arr.dtype.kind
    if kind not in "fiu":
        reason = {
            "b": "holds booleans",
            "U": "holds strings",
            "S": "holds bytes",
            "O": "is ragged or holds non-numbers (null, objects, huge integers)",
        }.get(kind, f"has dtype {arr.dtype}")
        raise PayloadError(f"item {i}: nested list {reason}; expected numbers only")
    return _to_model_layout(i, arr, plan, "nested list"), True


def _b64_bytes(i: int, text: str, what: str) -> bytes:
    text = _DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise PayloadError(f"item {i}: {what} is not valid base64 ({exc})") from None


def _from_image_b64(i: int, item: str, plan: _Plan) -> tuple[np.ndarray, bool]:
    _check_image_model(i, plan, "a string item is a base64 PNG/JPEG")
    return _from_image_bytes(i, _b64_bytes(i, item, "string"), plan)


def _check_image_model(i: int, plan: _Plan, what: str) -> None:
    if not plan.image:
        raise PayloadError(
            f"item {i}: {what}, which only image models take; "
            f"send a list of {plan.shape[0]} numbers or a raw float32 object"
        )
    if plan.pil_mode is None:
        raise PayloadError(
            f"item {i}: this model takes {plan.shape[0]}-channel inputs, which PNG/JPEG cannot "
            "carry; send nested lists or a raw float32 object"
        )


@functools.cache
def _pillow() -> tuple[ModuleType, ModuleType]:
    """(PIL.Image, PIL.ImageOps), imported on first use with the request decoder's guards set.

    Lazy: tabular services never need Pillow. Sets Pillow's documented, process-wide PNG text
    limit (``PngImagePlugin.MAX_TEXT_MEMORY``) to :data:`PNG_TEXT_BUDGET`, never higher than it
    was. Pillow's pixel-count guard (``Image.MAX_IMAGE_PIXELS``) stays as it is: the exact size
    check of :func:`_open_image` refuses every other size first, and a global pixel limit
    derived from one bundle would be wrong for another bundle served by the same process.
    """
    from PIL import Image, ImageOps, PngImagePlugin

    PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, PNG_TEXT_BUDGET)
    return Image, ImageOps


def _size_error(i: int, size: tuple[int, int], w: int, h: int) -> PayloadError:
    return PayloadError(
        f"item {i}: image is {size[0]}x{size[1]} (width x height) but the model takes "
        f"{w}x{h}; resize it before sending"
    )


def _open_image(i: int, data: bytes, w: int, h: int) -> Any:
    """The open PNG/JPEG (a ``PIL.Image.Image``) of item ``i``, W x H once its EXIF
    orientation is applied (the caller applies it).

    Opening reads the header only. Its size must be W x H, or H x W for an EXIF orientation
    that swaps the axes, before anything else is read: the EXIF of a PNG may follow the pixel
    data, so ``getexif()`` decodes the whole image. Checked first, no image that is not already
    the model's size is ever decoded: a 657 KB PNG declaring 13000x13000 RGBA used to be
    decoded in full (5 s, +640 MB) before the size check refused it.
    """
    Image, _ = _pillow()
    try:
        img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError:  # over Pillow's own pixel limit: refused in open
        raise PayloadError(
            f"item {i}: image declares more pixels than Pillow's decompression-bomb limit but "
            f"the model takes {w}x{h}; resize it before sending"
        ) from None
    size = img.size  # from the header
    if size not in ((w, h), (h, w)):
        img.close()
        raise _size_error(i, size, w, h)
    # at most W x H pixels from here on: reading the EXIF (and decoding) is cheap
    if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
        size = size[::-1]
    if size != (w, h):
        img.close()
        raise _size_error(i, size, w, h)
    return img


def _from_image_bytes(i: int, data: bytes, plan: _Plan) -> tuple[np.ndarray, bool]:
    """PNG/JPEG file bytes (a decoded base64 string, or a multipart upload)."""
    _check_image_model(i, plan, "a bytes item is a PNG/JPEG file")
    Image, ImageOps = _pillow()
    c, h, w = plan.shape
    try:
        with _open_image(i, data, w, h) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in _SIXTEEN_BIT:
                wide = np.asarray(img, dtype=np.float64) / 257
                img = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
            pixels = np.asarray(img.convert(plan.pil_mode), dtype=np.uint8)
    except PayloadError:
        raise
    except Exception as exc:  # Pillow raises many types for bad or truncated data
        reason = " ".join(str(exc).split())[:200]
        raise PayloadError(
            f"item {i}: cannot decode the image ({type(exc).__name__}: {reason}); "
            "send a PNG or JPEG, base64-encoded"
        ) from None
    pixels = pixels[None] if c == 1 else pixels.transpose(2, 0, 1)
    unit = pixels.astype(np.float32) / np.float32(255.0)
    return plan.pixel_lo + (plan.pixel_hi - plan.pixel_lo) * unit, False


def _from_raw(i: int, item: Mapping[str, Any], plan: _Plan) -> tuple[np.ndarray, bool]:
    unknown = set(item) - _RAW_KEYS
    if unknown or "b64" not in item or "shape" not in item:
        raise PayloadError(
            f"item {i}: a raw array object needs keys 'b64' and 'shape' (and optionally "
            f"'dtype': 'float32'); got keys {sorted(map(str, item))}"
        )
    dtype_name = item.get("dtype", "float32")
    dtype = _RAW_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise PayloadError(f"item {i}: raw dtype {dtype_name!r} is not supported; use 'float32'")
    shape = item["shape"]
    valid_shape = isinstance(shape, list | tuple) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
    )
    if not valid_shape:
        raise PayloadError(f"item {i}: raw 'shape' must be a list of positive integers")
    shape = tuple(shape)
    if shape not in plan.layouts:  # checked first: the byte count can be huge for a bad shape
        raise _layout_error(i, shape, plan, "raw array")
    if not isinstance(item["b64"], str):
        raise PayloadError(f"item {i}: raw 'b64' must be a base64 string")
    data = _b64_bytes(i, item["b64"], "raw 'b64'")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise PayloadError(
            f"item {i}: raw 'b64' holds {len(data)} bytes but shape {shape_str(shape)} of "
            f"{dtype_name} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return _to_model_layout(i, arr, plan, "raw array"), True


# item type -> decoder returning (example in model layout, whether it holds raw data)
_ItemDecoder = Callable[[int, Any, _Plan], tuple[np.ndarray, bool]]
_ITEM_DECODERS: tuple[tuple[type | tuple[type, ...], _ItemDecoder], ...] = (
    ((list, tuple, np.ndarray), _from_nested),
    (str, _from_image_b64),
    ((bytes, bytearray, memoryview), _from_image_bytes),
    (Mapping, _from_raw),
)


def _decode_item(i: int, item: Any, plan: _Plan) -> tuple[np.ndarray, bool]:
    for types, decoder in _ITEM_DECODERS:
        if isinstance(item, types):
            return decoder(i, item, plan)
    forms = "a nested list of numbers, " + ("a base64 PNG/JPEG string, " if plan.image else "")
    raise PayloadError(
        f"item {i}: got {type(item).__name__}; each item must be {forms}"
        "or {'b64': ..., 'dtype': 'float32', 'shape': [...]}"
    )


def decode_inputs(
    items: Any, spec: InputSpec, *, max_items: int, normalize: bool = True
) -> np.ndarray:
    """Request items -> float32 model input ``(B, *spec.shape)``, validated.

    See the module docstring for the accepted forms, layouts and value spaces. Items may mix
    forms. ``normalize=False`` skips the manifest normalization for nested lists and raw arrays
    (they are then model-space values). Any client problem is a :class:`PayloadError` naming
    the item index; a malformed ``spec.normalization`` is a plain ``ValueError`` (a bundle
    problem, not the client's).
    """
    if not isinstance(items, list | tuple):
        raise PayloadError(f"inputs must be a list of items, got {type(items).__name__}")
    if not items:
        raise PayloadError("inputs is empty: send at least one item")
    if len(items) > max_items:
        raise PayloadError(
            f"too many items: {len(items)}, at most {max_items} per request; split the batch"
        )
    plan = _plan(spec)
    out = np.empty((len(items), *plan.shape), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, reported below
        for i, item in enumerate(items):
            example, raw = _decode_item(i, item, plan)
            if raw and normalize:
                example = (example.astype(np.float64) - plan.shift) / plan.scale
            out[i] = example
    problem = _first_bad_item(out)
    if problem is not None:
        raise PayloadError(problem)
    return out


def is_identity(spec: InputSpec) -> bool:
    """Whether the bundle's normalization leaves raw values as they are (shift 0, scale 1)."""
    plan = _plan(spec)
    return bool((plan.shift == 0).all() and (plan.scale == 1).all())


def decode_batch(
    x: np.ndarray, spec: InputSpec, *, max_items: int, normalize: bool = True
) -> np.ndarray:
    """A whole batch already in the model's layout ``(B, *spec.shape)`` (a binary tensor, an
    .npy body) -> float32 model input, validated like :func:`decode_inputs`.

    The binary fast path: the values are raw data (the manifest's normalization is applied,
    as for nested lists); with the identity normalization a C-contiguous float32 batch is
    used as it is, without a copy or a float64 pass.
    """
    if x.ndim >= 1 and x.shape[0] > max_items:
        raise PayloadError(
            f"too many items: {x.shape[0]}, at most {max_items} per request; split the batch"
        )
    plan = _plan(spec)
    identity = not normalize or bool((plan.shift == 0).all() and (plan.scale == 1).all())
    if identity:
        return check_model_input(x, plan.shape)
    if x.dtype.kind not in "fiu":  # before arithmetic: the same message as the identity path
        raise PayloadError(f"input must hold real numbers, got dtype {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, reported below
        model = (np.asarray(x, dtype=np.float64) - plan.shift) / plan.scale
    return check_model_input(model, plan.shape)


# ---------------------------------------------------------------------------------------------
# Generation arguments
# ---------------------------------------------------------------------------------------------


def raw_items(x: np.ndarray) -> list[dict[str, Any]]:
    """Client helper: a batch (B, ...) as the compact raw-float32 request items."""
    return [
        {
            "b64": base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode(),
            "dtype": "float32",
            "shape": list(row.shape),
        }
        for row in np.asarray(x)
    ]


def parse_fixed_dims(fixed: Mapping[Any, Any] | None, latent_dim: int) -> dict[int, float]:
    """Validate ``{dim index: value}`` overrides for generation.

    Keys are ints in ``[0, latent_dim)``; decimal strings are accepted too, because JSON object
    keys always arrive as strings. Values must be finite numbers.
    """
    if fixed is None:
        return {}
    if not isinstance(fixed, Mapping):
        raise PayloadError(
            f"fixed must be an object mapping dimension index to value, got {type(fixed).__name__}"
        )
    out: dict[int, float] = {}
    for key, value in fixed.items():
        is_int = isinstance(key, int | np.integer) and not isinstance(key, bool)
        is_digits = isinstance(key, str) and re.fullmatch(r"\s*[+-]?\d+\s*", key) is not None
        index = int(key) if is_int or is_digits else None
        if index is None or not 0 <= index < latent_dim:
            raise PayloadError(
                f"fixed: dimension {key!r} is not an index in 0..{latent_dim - 1} "
                f"(the model has latent_dim {latent_dim})"
            )
        numeric = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool) or not numeric or not abs(float(value)) <= _F32_MAX:
            raise PayloadError(
                f"fixed: the value of dimension {index} must be a finite number "
                f"(|value| <= {_F32_MAX:.3g}, float32), got {value!r}"
            )
        if index in out:
            raise PayloadError(f"fixed: dimension {index} is given twice")
        out[index] = float(value)
    return out
