"""In-distribution traffic for drift benchmarks: rows a bundle's export did not use, encoded.

A bundle's reference and calibration pool are rows of its training data's val split, chosen
by ``sculptserve.export.writer.heldout_rows``; these helpers recompute that choice from the
manifest (export seed 0, the default) so traffic never reuses them. The train split is also
in distribution (the model trained on it, so it is not *held-out*): it is what makes more than
a few hundred fresh windows possible on a val split of 73,728 shapes images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sculptserve.bundle.load import Bundle
from sculptserve.export.writer import ExportOptions, heldout_rows
from sculptserve.offline.embedding import bundle_data_description
from sculptserve.serving.runtime import EmbeddingRuntime
from sculptserve.training.data import Dataset, dataset_from_description


def export_options_of(bundle: Bundle, seed: int = 0) -> ExportOptions:
    """The export options that decide which held-out rows a bundle used."""
    drift = bundle.manifest.drift
    return ExportOptions(
        n_reference=bundle.manifest.reference.n,
        window=drift.window,
        # bundles from before the pool size was recorded drew max(16 * window, 4096) rows
        pool_rows=drift.pool_rows or max(16 * drift.window, 4096),
        seed=seed,
    )


def fresh_rows(bundle: Bundle, split: str, seed: int = 1) -> tuple[Dataset, np.ndarray]:
    """The ``split`` of the bundle's training data and its rows the export did not use,
    in a seeded random order."""
    data = dataset_from_description(bundle_data_description(bundle), split=split)
    rows = np.arange(len(data))
    if split == "val":
        rows = np.setdiff1d(rows, heldout_rows(len(data), export_options_of(bundle)))
    return data, np.random.default_rng(seed).permutation(rows)


def encode_rows(
    runtime: EmbeddingRuntime,
    data: Dataset,
    rows: np.ndarray,
    cache: Path | None = None,
    batch: int = 4096,
) -> np.ndarray:
    """Encoder means of ``data[rows]`` through the bundle's ONNX graph, cached in ``cache``
    (an .npy file keyed by the caller) when given."""
    if cache is not None and cache.exists():
        z = np.load(cache)
        if len(z) == len(rows):
            return z
    z = np.concatenate(
        [runtime.encode(data.get_batch(rows[i : i + batch])) for i in range(0, len(rows), batch)]
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, z)
    return z
