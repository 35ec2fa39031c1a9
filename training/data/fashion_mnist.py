"""``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist``.

60,000 train and 10,000 test images, 28x28 grayscale, 10 classes. The official test set is the
"val" split (seed and val_fraction do not apply); "all" is both, train first. Files are read
whole with gzip + numpy, and their magic numbers and sizes are checked, so a truncated or
corrupt file raises DataError naming it instead of yielding garbage.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from sculptserve.training.data.array_dataset import ArrayDataset, image_dataset
from sculptserve.training.data.base import LoadSpec
from sculptserve.training.data.errors import DataError

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 0x803, 0x801  # unsigned bytes; 3 and 1 dimensions
LABEL_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
INSTALL_HINT = (
    "install them with `apt-get install dataset-fashion-mnist` (they go to "
    f"{DEFAULT_PATH}) or pass the folder that holds them as the data path (--data PATH)"
)


def is_idx_folder(folder: Path) -> bool:
    """Whether ``folder`` holds the Fashion-MNIST (or MNIST) training images as IDX."""
    return _find(folder, FILES["train"][0]) is not None


def load_fashion_mnist(spec: LoadSpec) -> ArrayDataset:
    folder = Path(spec.data_path or DEFAULT_PATH).expanduser()
    spec = spec.replace(data_path=None if spec.data_path is None else str(folder.resolve()))
    parts = ["train", "val"] if spec.split == "all" else [spec.split]
    images, labels = zip(*(_read_pair(folder, part) for part in parts), strict=True)
    raw = images[0] if len(images) == 1 else np.concatenate(images)
    return image_dataset(
        spec,
        raw,
        rows=np.arange(len(raw)),  # the official split is the file split: every row read
        what=f"fashion-mnist ({folder})",
        divide_by=255,
        rule="x / 255",
        labels=labels[0] if len(labels) == 1 else np.concatenate(labels),
        label_names=LABEL_NAMES,
        notes=["the val split is the official 10,000-image test set"],
    )


def _read_pair(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    image_name, label_name = FILES[part]
    image_path, label_path = _find(folder, image_name), _find(folder, label_name)
    if image_path is None or label_path is None:
        missing = image_name if image_path is None else label_name
        raise DataError(f"Fashion-MNIST file {missing}(.gz) not found in {folder}; {INSTALL_HINT}")
    images = read_idx(image_path, IMAGES_MAGIC, 3)
    labels = read_idx(label_path, LABELS_MAGIC, 1)
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels; "
            f"the files do not belong together; {INSTALL_HINT}"
        )
    if labels.max(initial=0) >= len(LABEL_NAMES):
        raise DataError(f"{label_path}: labels must be 0..9, found {labels.max()}")
    return images[:, None], labels


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, checking magic and size."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); it is truncated or corrupt") from None
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise DataError(
            f"{path}: not an IDX file of {ndim}-D unsigned bytes (bad magic number); "
            "it is corrupt or not the file its name says"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != header + math.prod(dims):
        raise DataError(
            f"{path}: {len(data) - header} data bytes, the header promises {math.prod(dims)}; "
            "it is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
