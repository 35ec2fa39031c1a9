"""Datasets for training and evaluation: a registry of named ones plus user files by suffix.

``load_dataset(source, split=...)`` returns a ``Dataset`` that serves float32 batches by
index: (B, C, H, W) in [0, 1] for images, (B, F) standardized with train-split statistics for
tabular data, with ground-truth ``factors`` (and ``labels``) where known. ``describe()`` is its
JSON description (stored in a run's config.json and a bundle manifest);
``dataset_from_description`` rebuilds the same data and normalization from it.

numpy-only: nothing here imports torch (the trainer wraps these), and nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sculptserve.training.data.base import LOAD_ARG_NAMES, SPLITS, Dataset, LoadSpec
from sculptserve.training.data.digits import load_digits_dataset
from sculptserve.training.data.errors import DataError
from sculptserve.training.data.fashion_mnist import load_fashion_mnist
from sculptserve.training.data.files import SUFFIX_LOADERS, load_path
from sculptserve.training.data.images import IMAGE_SUFFIXES
from sculptserve.training.data.normalization import Normalization
from sculptserve.training.data.shapes import ShapesDataset

__all__ = [
    "DATASETS",
    "SPLITS",
    "DataError",
    "Dataset",
    "LoadSpec",
    "Normalization",
    "dataset_from_description",
    "load_dataset",
]

DATASETS: dict[str, Callable[[LoadSpec], Dataset]] = {
    "shapes": ShapesDataset,
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits_dataset,
}


def load_dataset(
    source: str,
    *,
    split: str = "train",
    data_path: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    normalization: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load one split of a registered dataset or of a user path.

    source: a name in ``DATASETS`` (a name wins over a same-named file; write ``./shapes`` for
        the file) or a path: a folder of PNG/JPEG images, .npy, .npz, .csv or .parquet.
    split: "train", "val" (a held-out part chosen by ``seed`` and ``val_fraction``;
        fashion-mnist uses its official test set) or "all" (every row, in order).
    data_path: where a registered dataset's files are (fashion-mnist).
    image_size, channels: resize / convert an image folder; elsewhere they must match the data.
    normalization: a stored ``describe()["normalization"]`` to apply instead of fitting one
        (tabular sources; image sources scale by a fixed rule and ignore it).
    """
    spec = LoadSpec(
        source=str(source),
        split=split,
        data_path=None if data_path is None else str(data_path),
        image_size=image_size,
        channels=channels,
        seed=seed,
        val_fraction=val_fraction,
        normalization=None if normalization is None else dict(normalization),
    )
    factory = DATASETS.get(spec.source)
    if factory is not None:
        return factory(spec)
    if not _looks_like_path(spec.source):
        raise DataError(
            f"unknown dataset {spec.source!r}; known: {', '.join(sorted(DATASETS))}. A path is "
            f"also accepted: a folder of images ({', '.join(IMAGE_SUFFIXES)}) or a "
            f"{', '.join(SUFFIX_LOADERS)} file"
        )
    return load_path(spec)


def _looks_like_path(source: str) -> bool:
    """A bare word that is not a registered name and not an existing file is a typo'd name."""
    return Path(source).expanduser().exists() or any(c in source for c in "/\\.~")


def dataset_from_description(
    description: Mapping[str, Any], *, split: str | None = None, source: str | None = None
) -> Dataset:
    """Rebuild a dataset from ``describe()`` output with the same normalization.

    ``split`` picks another split of the same source (validation of a run). ``source`` applies
    the description to other data (serving: embed a new file with the train statistics); the
    split then defaults to "all", and the data must have the stored input shape. The same source
    and split must give the same rows as when described.
    """
    try:
        args = {key: description[key] for key in LOAD_ARG_NAMES}
        stored_shape = tuple(description["input_shape"])
        modality = description["modality"]
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"dataset description lacks the field {exc}; it is not from describe()"
        ) from None
    if source is not None:
        args.update(source=source, data_path=None, split="all")
    if split is not None:
        args["split"] = split
    norm = description.get("normalization") if modality == "tabular" else None
    dataset = load_dataset(**args, normalization=norm)
    if dataset.input_shape != stored_shape:
        raise DataError(
            f"{args['source']}: inputs have shape {dataset.input_shape}, the description "
            f"{stored_shape}; the data must match what the model was trained on"
        )
    stored_rows = description.get("rows_sha256")
    same_rows = source is None and args["split"] == description["split"]
    if same_rows and stored_rows not in (None, dataset.describe()["rows_sha256"]):
        raise DataError(
            f"{args['source']}: the {args['split']} split no longer has the rows it had when "
            "described: the data changed since (or a different numpy draws other splits)"
        )
    return dataset
