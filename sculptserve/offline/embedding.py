"""Batch work on whole datasets outside the service: which data a model belongs to, and
running an encoder (and decoder) over many rows with a progress bar.

Used by ``sculpt embed`` (ONNX Runtime) and ``sculpt eval`` (ONNX Runtime for bundles, torch for run
dirs). numpy only; the datasets come from :mod:`sculptserve.training.data`, which never imports
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sculptserve.bundle.load import Bundle

# sculptserve.training.data is imported where used: sculptserve's modules load without it
if TYPE_CHECKING:
    from sculptserve.training.data import Dataset

Batch = Callable[[np.ndarray], np.ndarray]

# The dataset fields a bundle's manifest keeps (in sculptserve.training.config) and their defaults
# there.
_LOAD_FIELDS = {
    "data": None,
    "data_path": None,
    "image_size": None,
    "channels": None,
    "seed": 0,
    "val_fraction": 0.1,
}


def bundle_data_description(bundle: Bundle) -> dict[str, Any]:
    """A ``Dataset.describe()``-like dict of the data the bundle's model was trained on, from
    its manifest (training config + input spec), for :func:`dataset_from_description`."""
    config = bundle.manifest.training.get("config", {})
    fields = {name: config.get(name, default) for name, default in _LOAD_FIELDS.items()}
    if not fields["data"]:
        raise ValueError(
            f"{bundle.path}: the manifest does not name the training data; pass the data "
            "explicitly (--data PATH)"
        )
    spec = bundle.manifest.input
    return {
        "source": fields.pop("data"),
        "split": "val",
        **fields,
        "input_shape": list(spec.shape),
        "modality": spec.modality,
        "normalization": spec.normalization,
    }


def model_dataset(description: dict[str, Any], data: str | None = None) -> Dataset:
    """The held-out split a model was validated on, or all rows of ``data`` (a registered
    dataset name or a path) prepared the same way (same normalization and input shape)."""
    from sculptserve.training.data import dataset_from_description

    if data is None:
        return dataset_from_description(description, split="val")
    return dataset_from_description(description, source=data)


def sample_rows(n_available: int, n_wanted: int, seed: int) -> np.ndarray:
    """Sorted seeded choice of at most ``n_wanted`` row positions out of ``n_available``."""
    if n_wanted >= n_available:
        return np.arange(n_available, dtype=np.int64)
    rows = np.random.default_rng([seed, 3]).choice(n_available, n_wanted, replace=False)
    return np.sort(rows).astype(np.int64)


@dataclass(frozen=True)
class Embedded:
    """Embeddings of some rows, and the NMSE (dB) of their reconstructions when a decoder ran."""

    embeddings: np.ndarray
    nmse_db: float | None


def embed_rows(
    dataset: Dataset,
    rows: np.ndarray,
    encode: Batch,
    decode: Batch | None = None,
    *,
    batch_size: int = 256,
    progress: bool = False,
    description: str = "embedding",
) -> Embedded:
    """Run ``encode`` (and ``decode`` on its output) over ``rows`` of ``dataset`` in batches.

    The reconstruction error is accumulated batch by batch, so no input array larger than one
    batch is ever held.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    outputs: list[np.ndarray] = []
    sq_error = energy = 0.0
    starts = range(0, len(rows), batch_size)
    for start in _track(starts, progress, description):
        x = dataset.get_batch(rows[start : start + batch_size])
        z = np.asarray(encode(x), dtype=np.float32)
        outputs.append(z)
        if decode is not None:
            x64 = x.astype(np.float64)
            sq_error += float(((x64 - np.asarray(decode(z), dtype=np.float64)) ** 2).sum())
            energy += float((x64**2).sum())
    if not outputs:
        raise ValueError(f"{dataset.source}: no rows to embed")
    nmse = None
    if decode is not None and energy > 0:
        with np.errstate(divide="ignore"):  # a perfect reconstruction is -inf dB
            nmse = float(10.0 * np.log10(sq_error / energy))
    return Embedded(np.concatenate(outputs), nmse)


def _track(items: range, enabled: bool, description: str):
    if not enabled or len(items) < 2:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)
