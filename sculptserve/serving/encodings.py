"""Wire encodings of what the service answers: embeddings and images.

Pure functions on numpy arrays; the REST and gRPC front ends serialize their results.

Embedding encodings (:data:`ENCODINGS`)
---------------------------------------
``float32`` (as is), ``float16`` (cast, saturating at +-65504), and ``uint8`` / ``int8``:
one byte per dimension, quantized through the prior's per-dimension CDF,
``code = clip(floor(cdf(z) * 256), 0, 255)`` (``int8`` is the same code minus 128), decoded as
``ppf((code + 0.5) / 256)``. When the latents follow the prior, ``cdf(z)`` is uniform, so equal
probability bins are the maximum-entropy code: every one of the 256 codes is used equally often.

Images out (:func:`images_to_png`): model-space images back to 8-bit PNG files, the inverse of
how :func:`sculptserve.serving.inputs.decode_inputs` reads pixels; :func:`png_max_bytes`
bounds their size before they are made.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sculptserve.serving.errors import PayloadError
from sculptserve.serving.inputs import PIL_MODES, shape_str
from sculptserve.stats.priors import Prior

__all__ = [
    "ENCODINGS",
    "Encoding",
    "decode_embeddings",
    "encode_embeddings",
    "get_encoding",
    "images_to_png",
    "images_to_png_b64",
    "png_max_bytes",
]


# ---------------------------------------------------------------------------------------------
# Embedding encodings
# ---------------------------------------------------------------------------------------------

LEVELS = 256  # one byte per dimension
_F16_MAX = float(np.finfo(np.float16).max)


def _quantize(z: np.ndarray, prior: Prior) -> np.ndarray:
    """uint8 codes: equal-probability bins of each dimension's prior marginal."""
    u = prior.cdf(z.astype(np.float64))
    return np.clip(np.floor(u * LEVELS), 0, LEVELS - 1).astype(np.uint8)


def _dequantize(codes: np.ndarray, prior: Prior) -> np.ndarray:
    """The prior quantile at each bin's probability midpoint."""
    u = (codes.astype(np.float64) + 0.5) / LEVELS
    return prior.ppf(u).astype(np.float32)


@dataclass(frozen=True)
class Encoding:
    """One wire format for embeddings. ``code_range`` is (min, max) for integer codes."""

    name: str
    dtype: np.dtype
    description: str
    encode: Callable[[np.ndarray, Prior], np.ndarray]
    decode: Callable[[np.ndarray, Prior], np.ndarray]
    code_range: tuple[int, int] | None = None

    @property
    def quantized(self) -> bool:
        return self.code_range is not None


ENCODINGS: dict[str, Encoding] = {
    e.name: e
    for e in (
        Encoding(
            "float32",
            np.dtype(np.float32),
            "the encoder output as is",
            encode=lambda z, prior: z.astype(np.float32),
            decode=lambda c, prior: c.astype(np.float32),
        ),
        Encoding(
            "float16",
            np.dtype(np.float16),
            "half precision, saturating at +-65504",
            encode=lambda z, prior: np.clip(z, -_F16_MAX, _F16_MAX).astype(np.float16),
            decode=lambda c, prior: c.astype(np.float32),
        ),
        Encoding(
            "uint8",
            np.dtype(np.uint8),
            "code = floor(prior.cdf(z) * 256) in 0..255; decoded as prior.ppf((code + .5) / 256)",
            encode=_quantize,
            decode=_dequantize,
            code_range=(0, 255),
        ),
        Encoding(
            "int8",
            np.dtype(np.int8),
            "the uint8 code minus 128, in -128..127",
            encode=lambda z, prior: (_quantize(z, prior).astype(np.int16) - 128).astype(np.int8),
            decode=lambda c, prior: _dequantize((c.astype(np.int16) + 128).astype(np.uint8), prior),
            code_range=(-128, 127),
        ),
    )
}


def get_encoding(name: Any) -> Encoding:
    """The registered encoding ``name``; an unknown one is a PayloadError listing the valid."""
    enc = ENCODINGS.get(name) if isinstance(name, str) else None
    if enc is None:
        raise PayloadError(f"unknown encoding {name!r}; valid encodings: {', '.join(ENCODINGS)}")
    return enc


def _check_batch(arr: np.ndarray, dim: int, what: str, error: type[ValueError]) -> None:
    if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0:
        raise error(f"{what} has shape {shape_str(arr.shape)}, expected (n >= 1, {dim})")


def encode_embeddings(z: np.ndarray, prior: Prior, encoding: str) -> np.ndarray:
    """Encoder output ``(n, D)`` -> codes in ``encoding``'s dtype (call ``.tolist()`` for JSON).

    ``z`` comes from the model, so its problems (shape, NaN) are ``ValueError``; only an
    unknown encoding name is the client's :class:`PayloadError`.
    """
    enc = get_encoding(encoding)
    arr = np.asarray(z)
    _check_batch(arr, prior.dim, "embeddings", ValueError)
    if arr.dtype.kind != "f" or not np.isfinite(arr).all():
        raise ValueError(f"embeddings must be finite floats (dtype {arr.dtype})")
    return enc.encode(arr, prior)


def decode_embeddings(codes: Any, prior: Prior, encoding: str) -> np.ndarray:
    """Codes of ``encoding`` (array or nested lists) -> float32 latents ``(n, D)``.

    The codes come from a client, so every problem is a :class:`PayloadError`: shape,
    non-integer or out-of-range codes for the quantized encodings, NaN/Inf for float ones.
    """
    enc = get_encoding(encoding)
    try:
        arr = np.asarray(codes)
    except ValueError:
        raise PayloadError("codes are ragged: every row must have the same length") from None
    _check_batch(arr, prior.dim, "codes", PayloadError)
    if arr.dtype.kind not in "fiu":
        raise PayloadError(f"codes must be numbers, got dtype {arr.dtype}")
    if enc.code_range is None:
        if not np.isfinite(arr).all():
            raise PayloadError(f"{enc.name} codes must be finite")
        return enc.decode(arr, prior)
    lo, hi = enc.code_range
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise PayloadError(f"{enc.name} codes must be integers in {lo}..{hi}")
    if (arr < lo).any() or (arr > hi).any():
        raise PayloadError(f"{enc.name} codes must lie in {lo}..{hi}")
    return enc.decode(arr.astype(enc.dtype), prior)


# ---------------------------------------------------------------------------------------------
# Images out
# ---------------------------------------------------------------------------------------------


def images_to_png(x: np.ndarray, value_range: Sequence[float] | None = (0.0, 1.0)) -> list[bytes]:
    """``(B, C, H, W)`` model-space images (C = 1 or 3) -> PNG files (bytes).

    Values are mapped from ``value_range`` to 0..255 (the inverse of how :func:`decode_inputs`
    reads pixels), clipped, and rounded; NaN becomes 0.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[1] not in PIL_MODES:
        raise ValueError(f"expected (B, C, H, W) with C = 1 or 3, got {list(arr.shape)}")
    from PIL import Image

    lo, hi = (value_range or (0.0, 1.0))[:2]
    unit = np.nan_to_num((arr - lo) / (hi - lo), nan=0.0)
    pixels = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    mode = PIL_MODES[arr.shape[1]]
    out = []
    for img in pixels:
        buf = io.BytesIO()
        plane = img[0] if mode == "L" else img.transpose(1, 2, 0)
        # uint8 (H, W) -> L, (H, W, 3) -> RGB (Pillow 13 infers the mode; the argument is gone)
        Image.fromarray(np.ascontiguousarray(plane)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def images_to_png_b64(x: np.ndarray, value_range: Sequence[float] | None = (0.0, 1.0)) -> list[str]:
    """:func:`images_to_png` as base64 strings (the JSON form)."""
    return [base64.b64encode(png).decode("ascii") for png in images_to_png(x, value_range)]


# PNG framing: signature (8) + IHDR chunk (25) + IEND chunk (12); every IDAT chunk adds 12.
_PNG_FIXED_BYTES = 8 + 25 + 12
_PNG_CHUNK_BYTES = 12
_PNG_IDAT_DATA = 2**16  # Pillow writes one IDAT chunk per 64 KiB block of compressed data


def png_max_bytes(shape: Sequence[int]) -> int:
    """An upper bound on the size of one :func:`images_to_png` file of a ``(C, H, W)`` image,
    whatever its pixels (so a response can be sized before the model runs).

    The PNG stream is H rows of one filter byte + W * C bytes, deflated; zlib's worst case is
    its ``compressBound`` (incompressible data is stored with small block headers), and every
    IDAT chunk adds 12 bytes (one more chunk counted for a partial last block, and one spare).
    """
    c, h, w = (int(d) for d in shape)
    raw = h * (1 + w * c)
    deflated = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13  # zlib's compressBound
    chunks = deflated // _PNG_IDAT_DATA + 2
    return _PNG_FIXED_BYTES + deflated + chunks * _PNG_CHUNK_BYTES
