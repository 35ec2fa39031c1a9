"""User data given as a path, dispatched by kind: a folder, or a file by its suffix.

- folder: images (PNG/JPEG, see ``images.py``), or a folder of Fashion-MNIST IDX files
- ``.npy``: one array, memory-mapped: (n, F) tabular, (n, H, W) or (n, C, H, W) images
- ``.npz``: key ``x`` as for .npy (loaded whole), optional ``factors`` (n, K) non-negative
  integer codes, ``labels`` (n,), ``factor_names`` (K,) strings
- ``.csv`` / ``.parquet``: numeric columns (tabular, see ``tabular.py``)

Arrays are read with ``allow_pickle=False`` always. Image arrays: uint8 is scaled by 1/255,
bool is 0/1, floats must already lie in [0, 1]; other integer types are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sculptserve.training.data.array_dataset import image_dataset, tabular_dataset
from sculptserve.training.data.base import Dataset, LoadSpec
from sculptserve.training.data.errors import DataError
from sculptserve.training.data.fashion_mnist import is_idx_folder, load_fashion_mnist
from sculptserve.training.data.images import IMAGE_SUFFIXES, load_image_folder
from sculptserve.training.data.tabular import load_csv, load_parquet

CHUNK_ROWS = 65_536  # rows checked at a time, so a memory-mapped array is never read whole


def load_npy(spec: LoadSpec, path: Path) -> Dataset:
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as a plain numeric .npy array ({exc})") from None
    return dataset_from_array(spec, x, str(path))


def load_npz(spec: LoadSpec, path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as a plain numeric .npz archive ({exc})") from None
    if "x" not in arrays:
        raise DataError(
            f"{path}: an .npz needs the inputs under key 'x' (optional 'factors', 'labels', "
            f"'factor_names'); it has {sorted(arrays)}"
        )
    names = arrays.get("factor_names")
    return dataset_from_array(
        spec,
        arrays["x"],
        str(path),
        factors=arrays.get("factors"),
        factor_names=None if names is None else [str(s) for s in names.tolist()],
        labels=arrays.get("labels"),
    )


def dataset_from_array(
    spec: LoadSpec,
    x: np.ndarray,
    what: str,
    *,
    factors: np.ndarray | None = None,
    factor_names: list[str] | None = None,
    labels: np.ndarray | None = None,
) -> Dataset:
    """Classify an array by rank (2: tabular, 3-4: images) and build the dataset."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what}: values must be numeric, got dtype {x.dtype}")
    extra = {"factors": factors, "factor_names": factor_names, "labels": labels}
    if x.ndim == 2:
        if x.dtype.kind == "f":
            _check_finite(x, what)
        return tabular_dataset(spec, x, what=what, **extra)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3):
        hint = (
            "; it looks channels-last: save np.transpose(x, (0, 3, 1, 2))"
            if x.shape[3] in (1, 3)
            else ""
        )
        raise DataError(f"{what}: images must be (n, C, H, W) with C 1 or 3, got {x.shape}{hint}")
    elif x.ndim != 4:
        raise DataError(
            f"{what}: expected (n, F) tabular or (n, H, W) / (n, C, H, W) images, got an array "
            f"of rank {x.ndim} with shape {x.shape}"
        )
    if x.dtype == np.uint8:
        divide_by, rule = 255.0, "x / 255"
    elif x.dtype.kind == "b":
        divide_by, rule = 1.0, "bool as 0/1"
    elif x.dtype.kind == "f":
        _check_finite(x, what)
        _check_unit_range(x, what)
        divide_by, rule = 1.0, "none: float values already in [0, 1]"
    else:
        raise DataError(
            f"{what}: {x.dtype} images are not supported; store uint8 (0..255) or floats in [0, 1]"
        )
    return image_dataset(spec, x, what=what, divide_by=divide_by, rule=rule, **extra)


def _row_blocks(x: np.ndarray):
    for start in range(0, len(x), CHUNK_ROWS):
        yield start, np.asarray(x[start : start + CHUNK_ROWS])


def _check_finite(x: np.ndarray, what: str) -> None:
    for start, block in _row_blocks(x):
        bad = ~np.isfinite(block)
        if bad.any():
            row, *rest = np.argwhere(bad)[0]
            where = f"row {start + row}" + (f", column {rest[0]}" if x.ndim == 2 else "")
            raise DataError(f"{what}: non-finite value (NaN or Inf) at {where}; fix or drop it")


def _check_unit_range(x: np.ndarray, what: str) -> None:
    lo = min(float(block.min()) for _, block in _row_blocks(x))
    hi = max(float(block.max()) for _, block in _row_blocks(x))
    if lo < 0 or hi > 1:
        raise DataError(
            f"{what}: float images must lie in [0, 1], found {lo:g}..{hi:g}; divide 0..255 "
            "values by 255 first, or store uint8"
        )


SUFFIX_LOADERS: dict[str, Callable[[LoadSpec, Path], Dataset]] = {
    ".npy": load_npy,
    ".npz": load_npz,
    ".csv": load_csv,
    ".parquet": load_parquet,
    ".pq": load_parquet,
}


def _load_folder(spec: LoadSpec, path: Path) -> Dataset:
    if is_idx_folder(path):  # `--data PATH` to a Fashion-MNIST copy
        return load_fashion_mnist(spec.replace(source="fashion-mnist", data_path=str(path)))
    return load_image_folder(spec, path)


def load_path(spec: LoadSpec) -> Dataset:
    """Load ``spec.source`` as a path; ``describe()`` records it as an absolute path."""
    if spec.data_path is not None:
        raise DataError(
            "a data path applies to registered datasets (fashion-mnist); with a file or folder "
            "as the source, drop it"
        )
    path = Path(spec.source).expanduser()
    if not path.exists():
        raise DataError(f"no such file or folder: {spec.source}")
    path = path.resolve()
    spec = spec.replace(source=str(path))
    if path.is_dir():
        return _load_folder(spec, path)
    loader = SUFFIX_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; use a folder of "
            f"images ({', '.join(IMAGE_SUFFIXES)}) or a file ending in "
            f"{', '.join(SUFFIX_LOADERS)}"
        )
    return loader(spec, path)
