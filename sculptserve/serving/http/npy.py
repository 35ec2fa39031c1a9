"""``application/x-npy`` bodies: numpy's .npy format in and out of /embed, with no pickles.

:func:`read_npy` reads the header with :mod:`numpy.lib.format` (format 1.0 and 2.0, numpy's
own limit on the header's size) and returns ``np.frombuffer`` over the body: the array views
the request's bytes, so a C-ordered float32 batch reaches the core (and, under the identity
normalization, ONNX Runtime) without a copy. Only plain numeric and boolean dtypes are read:
object arrays (pickles) and structured or text dtypes are refused before any data is touched,
so nothing in a body is ever unpickled. Every problem is a
:class:`~sculptserve.serving.errors.PayloadError` (400).
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.lib import format as npy_format

from sculptserve.serving.errors import PayloadError

__all__ = ["NPY", "read_npy", "write_npy"]

NPY = "application/x-npy"
_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}
_KINDS = "biuf"  # booleans reach the core, which says why it refuses them


def read_npy(body: bytes) -> np.ndarray:
    """The array of an .npy file's bytes, a read-only view of ``body`` (Fortran-ordered files
    give a transposed view; the core makes it contiguous)."""
    stream = io.BytesIO(body)
    try:
        version = npy_format.read_magic(stream)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise PayloadError(
                f"npy format version {version[0]}.{version[1]} is not supported; save with "
                "numpy.save (format 1.0 or 2.0)"
            )
        shape, fortran_order, dtype = reader(stream)
    except PayloadError:
        raise
    except ValueError as exc:  # numpy's reasons: bad magic, malformed or oversized header
        raise PayloadError(f"the body is not an .npy file: {exc}") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in _KINDS:
        raise PayloadError(
            f"npy dtype {dtype.str} is not a plain numeric type; send float32 (object arrays "
            "are never unpickled)"
        )
    if any(d < 0 for d in shape):
        raise PayloadError(f"the .npy header's shape {list(shape)} has a negative dimension")
    offset = stream.tell()
    count = math.prod(shape)
    expected = offset + count * dtype.itemsize
    if len(body) != expected:
        raise PayloadError(
            f"the .npy body has {len(body)} bytes but its header ({dtype.str}, shape "
            f"{list(shape)}) needs {expected}"
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def write_npy(array: np.ndarray) -> bytes:
    """An array as .npy bytes (format 1.0 where it fits, as ``numpy.save`` writes it)."""
    stream = io.BytesIO()
    npy_format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    return stream.getvalue()
