"""A folder of images (PNG/JPEG, searched recursively) as an image dataset.

Decisions:

- Files are sorted by their path relative to the folder, so row order (and so the seeded split)
  does not depend on the file system. Hidden files and folders (name starting with ".") are
  skipped; files with other suffixes are ignored and counted in ``notes``.
- Decoding is eager: every image is decoded once at load time into one uint8 array
  (1 byte a pixel), capped at ``MAX_DECODED_BYTES``; beyond that, convert the images to an
  .npy file, which is memory-mapped.
- A corrupt or undecodable image fails the load with a DataError naming the file: nothing is
  skipped silently, because a silently shrunk dataset changes the run without a trace.
- Size: ``image_size`` resizes every image to N x N (bilinear, aspect ratio not kept). Without
  it, all images must share one size, which is kept.
- Channels: 1 converts to 8-bit grayscale, 3 to RGB (alpha dropped). Without it, 1 if every
  image is stored as grayscale, else 3. 16-bit grayscale is scaled to 8 bits, not clipped.
- EXIF orientation is applied, so photos appear upright.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sculptserve.training.data.array_dataset import ArrayDataset, image_dataset
from sculptserve.training.data.base import LoadSpec
from sculptserve.training.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_DECODED_BYTES = 4 * 2**30
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")
GRAY_MODES = frozenset(("1", "L", "LA", "F", *_SIXTEEN_BIT))
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` in sorted relative-path order, and the count ignored."""
    images, ignored = [], 0
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            ignored += 1
    images.sort(key=lambda p: p.relative_to(folder).as_posix())
    return images, ignored


def load_image_folder(spec: LoadSpec, folder: Path) -> ArrayDataset:
    Image = _pillow()
    paths, ignored = list_images(folder)
    if not paths:
        raise DataError(
            f"{folder}: no images found (searched recursively for {', '.join(IMAGE_SUFFIXES)})"
        )
    modes, sizes = zip(*(_probe(Image, p) for p in paths), strict=True)
    channels = spec.channels or (1 if all(m in GRAY_MODES for m in modes) else 3)
    if spec.image_size is not None:
        width = height = spec.image_size
    elif len(set(sizes)) > 1:
        first = paths[0]
        other = next(p for p, s in zip(paths, sizes, strict=True) if s != sizes[0])
        raise DataError(
            f"{folder}: images differ in size ({first.name} is {_wxh(sizes[0])}, {other.name} is "
            f"{_wxh(sizes[paths.index(other)])}); pass image_size (--image-size N) to resize "
            "all to N x N"
        )
    else:
        width, height = sizes[0]
    n_bytes = len(paths) * channels * height * width
    if n_bytes > MAX_DECODED_BYTES:
        raise DataError(
            f"{folder}: {len(paths)} images at {width}x{height}x{channels} decode to "
            f"{n_bytes / 2**30:.1f} GiB (limit {MAX_DECODED_BYTES / 2**30:.0f} GiB); pass a "
            "smaller image_size or save them as a uint8 .npy file (n, C, H, W), which is "
            "memory-mapped"
        )
    raw = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        raw[i] = _decode(Image, path, channels, (width, height))
    notes = [f"{len(paths)} images decoded from {folder}"]
    if ignored:
        notes.append(f"{ignored} file(s) without an image suffix ignored")
    return image_dataset(
        spec.replace(channels=channels),
        raw,
        what=str(folder),
        divide_by=255,
        rule="x / 255",
        notes=notes,
    )


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install pillow") from None
    return Image


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _probe(Image, path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and upright (width, height) from the header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            size = img.size
            if img.getexif().get(0x0112) in _TRANSPOSED_ORIENTATIONS:
                size = size[::-1]
            return img.mode, size
    except Exception as exc:  # Pillow raises many types for bad files; all mean "unreadable"
        raise _unreadable(path, exc) from None


def _decode(Image, path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """(channels, H, W) uint8 pixels of one image, converted and resized."""
    from PIL import ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in _SIXTEEN_BIT:  # Pillow's convert("L") would clip at 255
                wide = np.asarray(img, dtype=np.float64) / 257
                img = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # truncated data surfaces only here, in many exception types
        raise _unreadable(path, exc) from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path}: cannot decode image ({type(exc).__name__}: {exc}); fix or remove the file "
        "(corrupt images fail the load rather than being skipped)"
    )
