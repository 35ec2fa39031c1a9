"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

Pixel values are integers 0..16, scaled by ``x / 16`` into [0, 1]. Tiny, so good for smoke
runs; train/val is the seeded split.
"""

from __future__ import annotations

import numpy as np

from sculptserve.training.data.array_dataset import ArrayDataset, image_dataset
from sculptserve.training.data.base import LoadSpec
from sculptserve.training.data.errors import DataError


def load_digits_dataset(spec: LoadSpec) -> ArrayDataset:
    if spec.data_path is not None:
        raise DataError("digits ships inside scikit-learn and takes no data path; drop it")
    try:
        from sklearn.datasets import load_digits  # optional dependency (the `eval` extra)
    except ImportError:
        raise DataError(
            "the digits dataset needs scikit-learn: pip install 'sculptserve[eval]'"
        ) from None
    bunch = load_digits()
    raw = bunch.images.astype(np.uint8)[:, None]  # values 0..16, exact in uint8
    return image_dataset(
        spec,
        raw,
        what="digits",
        divide_by=16,
        rule="x / 16",
        labels=bunch.target,
        label_names=[str(d) for d in range(10)],
    )
