"""Arrays as JSON-able dicts (little-endian base64 bytes, dtype, shape): how tests/test_oip_grpc.py
and its tritonclient child process (tests/triton_worker.py) pass arrays to each other. Imports
numpy only, so either side can load it."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def encode(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {
        "b64": base64.b64encode(little.tobytes()).decode(),
        "dtype": little.dtype.str,
        "shape": list(array.shape),
    }


def decode(obj: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(obj["b64"])
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
