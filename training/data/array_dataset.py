"""A dataset backed by one array in memory (or memory-mapped), and the two builders that turn
raw image or tabular arrays into one: check the load arguments, split, choose normalization.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sculptserve.training.data.base import (
    Dataset,
    LoadSpec,
    Modality,
    check_factors,
    check_indices,
    split_rows,
)
from sculptserve.training.data.errors import DataError
from sculptserve.training.data.normalization import Normalization, fit_standardization


class ArrayDataset(Dataset):
    """Rows ``raw[rows]`` of one array; batches are normalized as they are read.

    ``raw`` holds every row of the source (both splits), in its stored dtype (uint8 images stay
    uint8, so memory is 1 byte a pixel); ``factors`` and ``labels`` likewise cover every row.
    """

    def __init__(
        self,
        *,
        spec: LoadSpec,
        raw: np.ndarray,
        rows: np.ndarray,
        modality: Modality,
        normalization: Normalization,
        factors: np.ndarray | None = None,
        factor_names: Sequence[str] = (),
        factor_sizes: Sequence[int] = (),
        labels: np.ndarray | None = None,
        label_names: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        super().__init__(
            spec=spec,
            modality=modality,
            input_shape=raw.shape[1:],
            normalization=normalization,
            factor_names=factor_names,
            factor_sizes=factor_sizes,
            label_names=label_names,
            columns=columns,
            notes=notes,
        )
        self._raw = raw
        self._rows = rows
        self._all_factors = factors
        self._all_labels = labels

    @property
    def rows(self) -> np.ndarray:
        return self._rows

    def get_batch(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        return self.normalization.apply(self._raw[self._rows[check_indices(indices, len(self))]])

    @property
    def factors(self) -> np.ndarray | None:
        return None if self._all_factors is None else self._all_factors[self._rows]

    @property
    def labels(self) -> np.ndarray | None:
        return None if self._all_labels is None else self._all_labels[self._rows]


def image_dataset(
    spec: LoadSpec,
    raw: np.ndarray,
    *,
    what: str,
    divide_by: float,
    rule: str,
    rows: np.ndarray | None = None,
    factors: np.ndarray | None = None,
    factor_names: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    notes: Sequence[str] = (),
) -> ArrayDataset:
    """Images ``raw`` of shape (n, C, H, W) scaled by ``1 / divide_by`` into [0, 1].

    A requested ``channels`` or ``image_size`` must match the stored images (only image
    folders convert and resize); the spec records the resolved values so a rebuild from
    ``describe()`` asks for the same shape. ``rows`` overrides the seeded split (sources that
    come split, like Fashion-MNIST's files).
    """
    n, c, h, w = raw.shape
    if spec.channels is not None and spec.channels != c:
        raise DataError(
            f"{what} has {c} channel(s), not the {spec.channels} asked for; leave channels unset "
            "or convert the data"
        )
    if spec.image_size is not None and (h, w) != (spec.image_size, spec.image_size):
        raise DataError(
            f"{what} holds {h}x{w} images, not {spec.image_size}x{spec.image_size}; leave "
            "image_size unset or resize the data (only image folders are resized on load)"
        )
    spec = spec.replace(channels=c, image_size=h if h == w else None)
    rows = split_rows(n, spec, what) if rows is None else rows.astype(np.int64)
    return ArrayDataset(
        spec=spec,
        raw=raw,
        rows=rows,
        modality="image",
        normalization=Normalization.scaling(divide_by, rule),
        **_factor_kwargs(n, what, factors, factor_names, labels, label_names),
        notes=notes,
    )


def tabular_dataset(
    spec: LoadSpec,
    raw: np.ndarray,
    *,
    what: str,
    columns: Sequence[str] | None = None,
    factors: np.ndarray | None = None,
    factor_names: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    notes: Sequence[str] = (),
) -> ArrayDataset:
    """Numeric rows ``raw`` (n, F), standardized with train-split statistics.

    The statistics are fitted on the train split of (seed, val_fraction) whatever split is
    asked for, unless ``spec.normalization`` carries stored ones (validation of a run, serving).
    """
    if spec.image_size is not None or spec.channels is not None:
        raise DataError(f"{what} is tabular: image_size and channels apply only to images")
    n, n_features = raw.shape
    if n_features == 0:
        raise DataError(f"{what} has no columns")
    columns = [f"x{i}" for i in range(n_features)] if columns is None else list(columns)
    rows = split_rows(n, spec, what)
    if spec.normalization is not None:
        norm = _stored_standardization(spec.normalization, columns, what)
    else:
        train = rows if spec.split == "train" else split_rows(n, spec.replace(split="train"), what)
        fitted_on = (
            f"train split: {len(train)} of {n} rows (seed {spec.seed}, "
            f"val_fraction {spec.val_fraction})"
        )
        norm = fit_standardization(raw, train, columns, fitted_on)
    notes = list(notes)
    if norm.constant_columns:
        notes.append(
            f"constant column(s) {', '.join(norm.constant_columns)} on the train split: std set "
            "to 1, so they carry no information"
        )
    return ArrayDataset(
        spec=spec,
        raw=raw,
        rows=rows,
        modality="tabular",
        normalization=norm,
        columns=columns,
        **_factor_kwargs(n, what, factors, factor_names, labels, None),
        notes=notes,
    )


def _stored_standardization(data: dict, columns: list[str], what: str) -> Normalization:
    norm = Normalization.from_dict(data)
    if norm.n_features != len(columns):
        raise DataError(
            f"{what} has {len(columns)} columns, the stored normalization {norm.n_features}; "
            "the data must have the columns the model was trained on"
        )
    if norm.columns is not None and list(norm.columns) != columns:
        diff = next(
            (i, a, b) for i, (a, b) in enumerate(zip(norm.columns, columns, strict=True)) if a != b
        )
        raise DataError(
            f"{what}: column {diff[0]} is {diff[2]!r} but the model was trained with {diff[1]!r} "
            "there; give the columns in the training order"
        )
    return norm


def _factor_kwargs(
    n: int,
    what: str,
    factors: np.ndarray | None,
    factor_names: Sequence[str] | None,
    labels: np.ndarray | None,
    label_names: Sequence[str] | None,
) -> dict:
    """Checked factors and labels; labels alone also serve as the single factor ``"label"``."""
    out: dict = {"label_names": label_names}
    if labels is not None:
        codes, _, _ = check_factors(labels, n, f"{what} labels")
        out["labels"] = codes[:, 0]
        if factors is None:
            factors, factor_names = out["labels"], ["label"]
            if label_names is not None:  # the class count, even if a class has no rows here
                out["factor_sizes"] = [len(label_names)]
    if factors is not None:
        codes, names, sizes = check_factors(factors, n, f"{what} factors", factor_names)
        out.update(factors=codes, factor_names=names)
        out.setdefault("factor_sizes", sizes)
    return out
