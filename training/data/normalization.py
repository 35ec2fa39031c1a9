"""Input normalization ``y = (x - shift) / scale``, stored as JSON with a run and a bundle.

Images use one scalar rule fixed by how they are stored (uint8: ``x / 255``). Tabular data is
standardized per column with the mean and standard deviation of the *train* split; val rows and
serving inputs apply exactly those numbers, so they are saved rather than recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sculptserve.training.data.errors import DataError

CHUNK_ROWS = 65_536  # bounds the float64 working copy when fitting on large (memory-mapped) arrays


@dataclass(frozen=True, eq=False)
class Normalization:
    """``y = (x - shift) / scale`` element-wise; shift and scale are scalars or one per column."""

    shift: np.ndarray
    scale: np.ndarray
    rule: str
    columns: tuple[str, ...] | None = None
    constant_columns: tuple[str, ...] = ()
    fitted_on: str | None = None

    @classmethod
    def scaling(cls, divide_by: float, rule: str) -> Normalization:
        """A fixed image rule, e.g. ``scaling(255, "x / 255")``."""
        return cls(shift=np.float64(0.0), scale=np.float64(divide_by), rule=rule)

    @property
    def n_features(self) -> int | None:
        """Number of per-column entries, None for a scalar rule."""
        return None if np.ndim(self.scale) == 0 else int(np.size(self.scale))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalize a batch to float32 (computed in float64 when ``x`` is float64 or int64)."""
        work = np.result_type(x.dtype, np.float32)
        y = (np.asarray(x).astype(work, copy=False) - self.shift.astype(work)) / self.scale.astype(
            work
        )
        return np.asarray(y, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "affine",
            "formula": "(x - shift) / scale",
            "rule": self.rule,
            "shift": self.shift.tolist(),
            "scale": self.scale.tolist(),
            "columns": None if self.columns is None else list(self.columns),
            "constant_columns": list(self.constant_columns),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        """Rebuild from ``to_dict()`` output; a malformed dict raises DataError saying what."""
        if not isinstance(data, dict) or data.get("kind") != "affine":
            raise DataError(f"normalization must be a dict with kind 'affine', got {data!r:.200}")
        try:
            shift = np.asarray(data["shift"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"normalization needs numeric 'shift' and 'scale' ({exc})") from None
        if shift.shape != scale.shape or shift.ndim > 1:
            raise DataError(
                f"normalization 'shift' {shift.shape} and 'scale' {scale.shape} must be scalars "
                "or vectors of one length"
            )
        if not (np.isfinite(shift).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise DataError("normalization 'shift' must be finite and 'scale' finite and > 0")
        columns = data.get("columns")
        return cls(
            shift=shift,
            scale=scale,
            rule=str(data.get("rule", "")),
            columns=None if columns is None else tuple(str(c) for c in columns),
            constant_columns=tuple(str(c) for c in data.get("constant_columns", ())),
            fitted_on=data.get("fitted_on"),
        )


def fit_standardization(
    raw: np.ndarray, rows: np.ndarray, columns: Sequence[str], fitted_on: str
) -> Normalization:
    """Per-column mean and (population) std of ``raw[rows]``, read in chunks.

    Two passes (mean, then centred squares) keep the variance accurate for columns with a large
    offset. A constant column (min == max on these rows) gets std 1, so it maps to ~0 instead
    of dividing by zero; it is listed in ``constant_columns``.
    """
    n_features = raw.shape[1]
    total = np.zeros(n_features)
    lo = np.full(n_features, np.inf)
    hi = np.full(n_features, -np.inf)
    for block in _blocks(raw, rows):
        total += block.sum(axis=0)
        lo = np.minimum(lo, block.min(axis=0))
        hi = np.maximum(hi, block.max(axis=0))
    mean = total / len(rows)
    squares = np.zeros(n_features)
    for block in _blocks(raw, rows):
        squares += ((block - mean) ** 2).sum(axis=0)
    std = np.sqrt(squares / len(rows))
    constant = lo == hi
    std[constant] = 1.0
    return Normalization(
        shift=mean,
        scale=std,
        rule="standardize per column: (x - train mean) / train std",
        columns=tuple(columns),
        constant_columns=tuple(c for c, k in zip(columns, constant, strict=True) if k),
        fitted_on=fitted_on,
    )


def _blocks(raw: np.ndarray, rows: np.ndarray):
    for start in range(0, len(rows), CHUNK_ROWS):
        yield np.asarray(raw[rows[start : start + CHUNK_ROWS]], dtype=np.float64)
