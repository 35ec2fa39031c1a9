"""The parts every dataset shares: the error type, the load arguments, the seeded split and the
``Dataset`` interface.

Everything in ``sculptserve.training.data`` is numpy-only and never imports torch: the serving side
(``sculpt embed``, ``sculpt eval``) reuses these datasets without torch, and the trainer wraps
them itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sculptserve.training.data.errors import DataError
from sculptserve.training.data.normalization import Normalization

__all__ = [
    "LOAD_ARG_NAMES",
    "DataError",
    "Dataset",
    "LoadSpec",
    "check_factors",
    "check_indices",
    "split_rows",
]

Modality = Literal["image", "tabular"]
SPLITS = ("train", "val", "all")
MIN_ROWS_PER_SPLIT = 2
DESCRIPTION_SCHEMA = 1


@dataclass(frozen=True)
class LoadSpec:
    """The arguments of ``load_dataset``, validated; ``load_args()`` is what a run stores.

    ``normalization`` is a stored normalization (``describe()["normalization"]``) to apply
    instead of fitting one; only tabular sources use it (images scale by a fixed rule).
    """

    source: str
    split: str = "train"
    data_path: str | None = None
    image_size: int | None = None
    channels: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    normalization: dict[str, Any] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DataError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if not _is_int(self.seed) or self.seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.val_fraction, numbers.Real) or not 0 < self.val_fraction < 1:
            raise DataError(
                f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction!r}"
            )
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            raise DataError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.channels not in (None, 1, 3) or isinstance(self.channels, bool):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        # Plain Python numbers, so describe() stays JSON-able when numpy scalars come in.
        for name, kind in (("seed", int), ("val_fraction", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        for name in ("image_size", "channels"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))

    def load_args(self) -> dict[str, Any]:
        """The keyword arguments of ``load_dataset`` that rebuild this source and split."""
        args = dataclasses.asdict(self)
        del args["normalization"]
        return args

    def replace(self, **changes: Any) -> LoadSpec:
        return dataclasses.replace(self, **changes)


LOAD_ARG_NAMES = tuple(f.name for f in dataclasses.fields(LoadSpec) if f.name != "normalization")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def split_rows(n: int, spec: LoadSpec, what: str) -> np.ndarray:
    """Row indices (sorted) of ``spec.split`` among ``n`` rows.

    train/val come from one seeded permutation: its first ``round(n * val_fraction)`` entries
    are val, the rest train, so the two never overlap and the same seed gives the same split.
    """
    if n < 1:
        raise DataError(f"{what} holds no rows")
    if spec.split == "all":
        return np.arange(n, dtype=np.int64)
    n_val = round(n * spec.val_fraction)
    if min(n_val, n - n_val) < MIN_ROWS_PER_SPLIT:
        raise DataError(
            f"{what} has {n} rows: val_fraction {spec.val_fraction} leaves {n - n_val} train and "
            f"{n_val} val rows, and each split needs at least {MIN_ROWS_PER_SPLIT}; add rows or "
            "change val_fraction"
        )
    perm = np.random.default_rng(spec.seed).permutation(n)
    chosen = perm[:n_val] if spec.split == "val" else perm[n_val:]
    return np.sort(chosen).astype(np.int64)


def check_indices(indices: np.ndarray | Sequence[int], n: int) -> np.ndarray:
    """``indices`` as a 1-D int64 array within ``[0, n)``; a programming error raises IndexError."""
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise IndexError(f"indices must be a 1-D integer array, got {idx.dtype} shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= n:
        raise IndexError(f"indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
    return idx.astype(np.int64, copy=False)


def check_factors(
    factors: np.ndarray, n: int, what: str, names: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str], list[int]]:
    """Validate ground-truth factors: (n, K) non-negative integer codes; sizes are max + 1."""
    arr = np.asarray(factors)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] == 0:
        raise DataError(f"{what} must have shape ({n}, K) to match the {n} rows, got {arr.shape}")
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise DataError(f"{what} must hold finite numbers, got dtype {arr.dtype}")
    codes = arr.astype(np.int64)
    if (codes != arr).any() or codes.min() < 0:
        raise DataError(
            f"{what} must be non-negative integer codes (0..k-1 per factor); discretize "
            "continuous factors first"
        )
    k = arr.shape[1]
    names = [f"factor_{i}" for i in range(k)] if names is None else [str(s) for s in names]
    if len(names) != k:
        raise DataError(f"{what} has {k} columns but {len(names)} factor names")
    return codes, names, [int(s) + 1 for s in codes.max(axis=0)]


class Dataset(ABC):
    """A split of a data source, served as float32 batches by index.

    Batches are (B, C, H, W) with values in [0, 1] for images and (B, F) standardized with
    train-split statistics for tabular data. ``factors`` are (n, K) integer ground-truth codes
    for the rows of this split (None when unknown); datasets with labels also expose them as
    the single factor ``"label"``.
    """

    def __init__(
        self,
        *,
        spec: LoadSpec,
        modality: Modality,
        input_shape: tuple[int, ...],
        normalization: Normalization,
        factor_names: Sequence[str] = (),
        factor_sizes: Sequence[int] = (),
        label_names: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.modality: Modality = modality
        self.input_shape = tuple(int(s) for s in input_shape)
        self.normalization = normalization
        self.factor_names = list(factor_names)
        self.factor_sizes = [int(s) for s in factor_sizes]
        self.label_names = None if label_names is None else list(label_names)
        self.columns = None if columns is None else list(columns)
        self.notes = list(notes)

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def split(self) -> str:
        return self.spec.split

    @property
    @abstractmethod
    def rows(self) -> np.ndarray:
        """Indices (sorted, int64) of this split's rows among the rows read from the source."""

    def __len__(self) -> int:
        return len(self.rows)

    @abstractmethod
    def get_batch(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """float32 inputs for positions ``indices`` of this split (see the class docstring)."""

    @property
    def factors(self) -> np.ndarray | None:
        """(n, K) int64 ground-truth factor codes of this split's rows, or None."""
        return None

    @property
    def labels(self) -> np.ndarray | None:
        """(n,) int64 class labels of this split's rows, or None."""
        return None

    def get_factors(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """(B, K) factor codes for positions ``indices`` of this split."""
        factors = self.factors
        if factors is None:
            raise DataError(f"{self.source} has no ground-truth factors or labels")
        return factors[check_indices(indices, len(self))]

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """All rows of this split in order, ``batch_size`` at a time (embedding, evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.get_batch(np.arange(start, min(start + batch_size, len(self))))

    def describe(self) -> dict[str, Any]:
        """JSON-able description for a run's config.json and an export manifest.

        The load arguments in it (with image size and channels resolved) plus its
        ``normalization`` rebuild the same data: see ``dataset_from_description``.
        """
        image = self.modality == "image"
        return {
            "schema": DESCRIPTION_SCHEMA,
            **self.spec.load_args(),
            "n": len(self),
            "rows_sha256": hashlib.sha256(self.rows.astype("<i8").tobytes()).hexdigest(),
            "modality": self.modality,
            "input_shape": list(self.input_shape),
            "dtype": "float32",
            "layout": "NCHW" if image else "NF",
            "color": ({1: "L", 3: "RGB"}.get(self.input_shape[0]) if image else None),
            "value_range": [0.0, 1.0] if image else None,
            "normalization": self.normalization.to_dict(),
            "columns": self.columns,
            "factor_names": self.factor_names,
            "factor_sizes": self.factor_sizes,
            "label_names": self.label_names,
            "has_labels": self.labels is not None,
            "notes": self.notes,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape})"
        )
