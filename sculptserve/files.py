"""File helpers: atomic writes and pickle-free array loading."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted or failed write therefore never leaves a truncated file under the final
    name, and an older file there survives until the new one is complete.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an .npy file atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Load an .npy file without ever unpickling it; errors name the file."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a plain numeric .npy array ({exc})") from None
    except OSError as exc:
        raise OSError(f"{path}: cannot be read as .npy ({exc})") from None
