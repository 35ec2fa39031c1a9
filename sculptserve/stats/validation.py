"""Checks on user-supplied embedding matrices, shared by the numpy scoring functions."""

from __future__ import annotations

import numpy as np


class EmbeddingError(ValueError):
    """An embedding matrix a user passed in cannot be scored; the message says why."""


def as_embeddings(
    z: object, *, name: str = "embeddings", min_rows: int = 2, min_dims: int = 1
) -> np.ndarray:
    """Return ``z`` as a finite float64 (n, d) array, or raise EmbeddingError saying why not."""
    try:
        arr = np.asarray(z, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"{name} must be a numeric array ({exc})") from None
    if arr.ndim != 2:
        raise EmbeddingError(
            f"{name} must be a 2-D array of shape (n_samples, n_dims), got shape {arr.shape}"
        )
    n, d = arr.shape
    if n == 0 or d == 0:
        raise EmbeddingError(f"{name} is empty (shape {arr.shape})")
    if d < min_dims:
        raise EmbeddingError(f"{name} needs at least {min_dims} dimensions, got {d}")
    if n < min_rows:
        raise EmbeddingError(f"{name} needs at least {min_rows} rows, got {n}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise EmbeddingError(
            f"{name} contains NaN or Inf in {bad_rows.size} row(s), first at row {bad_rows[0]}"
        )
    return arr


def constant_dims(z: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Indices of dimensions whose values do not vary (their variance is zero up to rounding)."""
    scale = np.maximum(np.abs(z).max(axis=0), 1.0)
    return np.flatnonzero(z.std(axis=0) <= rtol * scale)
