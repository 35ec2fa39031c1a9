"""``shapes``: a procedural dSprites-like dataset, rendered on demand from the image index.

Factors (dSprites order, first slowest in the mixed-radix index, posY fastest):

====================  =====  ==========================================================
factor                size   values
====================  =====  ==========================================================
shape                 3      square, ellipse, heart
scale                 6      0.5 .. 1.0 (linear)
orientation           40     k * 2pi / 40, k = 0..39 (counter-clockwise)
posX                  32     0 .. 1, left to right
posY                  32     0 .. 1, top to bottom
====================  =====  ==========================================================

3 * 6 * 40 * 32 * 32 = 737,280 binary images of ``size`` x ``size`` (64 by default). Nothing is
stored: an image is a point-sampled mask (pixel centres) of a shape whose bounding circle has
radius ``scale * 10/64 * size``. Positions span ``[margin, size - margin]`` with the margin
one maximum radius plus ``size/32 + 1`` pixels, so every shape at every scale, orientation and
position stays inside the frame with an empty border.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from sculptserve.training.data.base import Dataset, LoadSpec, check_indices, split_rows
from sculptserve.training.data.errors import DataError
from sculptserve.training.data.normalization import Normalization

FACTOR_NAMES = ["shape", "scale", "orientation", "posX", "posY"]
FACTOR_SIZES = [3, 6, 40, 32, 32]
N_IMAGES = math.prod(FACTOR_SIZES)  # 737,280
SHAPE_NAMES = ["square", "ellipse", "heart"]
SCALES = np.linspace(0.5, 1.0, FACTOR_SIZES[1])
ORIENTATIONS = np.arange(FACTOR_SIZES[2]) * (2 * np.pi / FACTOR_SIZES[2])
POSITIONS = np.linspace(0.0, 1.0, FACTOR_SIZES[3])
FACTOR_VALUES = [np.arange(3), SCALES, ORIENTATIONS, POSITIONS, POSITIONS]

DEFAULT_SIZE = 64
MIN_SIZE = 32  # smaller, the smallest shapes shrink to a few pixels (1 at 16) and look alike
RADIUS_FRACTION = 10 / 64  # bounding-circle radius at scale 1, as a fraction of the image side
CHUNK = 512  # images rendered at once: bounds the float32 temporaries to a few MB


def index_to_factors(index: np.ndarray | Sequence[int] | int) -> np.ndarray:
    """(n, 5) int64 factor codes of global indices (mixed radix, shape slowest, posY fastest)."""
    idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
    if idx.size and (idx.min() < 0 or idx.max() >= N_IMAGES):
        raise IndexError(
            f"shapes indices must lie in [0, {N_IMAGES}), got {idx.min()}..{idx.max()}"
        )
    return np.stack(np.unravel_index(idx, FACTOR_SIZES), axis=1).astype(np.int64)


def factors_to_index(factors: np.ndarray) -> np.ndarray:
    """Global indices of (n, 5) factor codes; the inverse of ``index_to_factors``."""
    codes = np.atleast_2d(np.asarray(factors, dtype=np.int64))
    return np.ravel_multi_index(tuple(codes.T), FACTOR_SIZES).astype(np.int64)


# Shape masks in local coordinates (u right, v up) in units of the bounding-circle radius:
# each shape lies inside the unit disc at every orientation.
def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= np.float32(1 / math.sqrt(2))


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + 4 * v * v <= 1  # semi-axes 1 and 1/2


_HEART_RADIUS, _HEART_CENTRE = np.float32(1.26), np.float32(0.25)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in [-1.14, 1.14], y in [-1, 1.24]; its smallest
    # enclosing circle is centred at (0, 0.25) with radius 1.25 (computed numerically), so
    # scaling by 1.26 about that centre puts it inside the unit disc.
    x = u * _HEART_RADIUS
    y = v * _HEART_RADIUS + _HEART_CENTRE
    x2 = x * x
    q = x2 + y * y - 1
    return q * q * q <= x2 * y * y * y


SHAPE_MASKS: list[Callable[[np.ndarray, np.ndarray], np.ndarray]] = [_square, _ellipse, _heart]


def frame_geometry(size: int) -> tuple[float, float]:
    """(maximum radius, margin) in pixels for ``size`` x ``size`` images."""
    radius = RADIUS_FRACTION * size
    return radius, radius + size / 32 + 1


def render(factors: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Render (n, 5) factor codes to float32 (n, 1, size, size) images of 0s and 1s.

    Vectorized per chunk: each shape is evaluated only on a small window around its centre
    (the bounding-circle box), then written into the zeroed frame.
    """
    codes = np.atleast_2d(np.asarray(factors, dtype=np.int64))
    out = np.zeros((len(codes), 1, size, size), dtype=np.float32)
    for start in range(0, len(codes), CHUNK):
        _render_chunk(codes[start : start + CHUNK], out[start : start + CHUNK, 0], size)
    return out


def _render_chunk(codes: np.ndarray, out: np.ndarray, size: int) -> None:
    radius, margin = frame_geometry(size)
    travel = size - 2 * margin
    r = (SCALES[codes[:, 1]] * radius).astype(np.float32)
    theta = ORIENTATIONS[codes[:, 2]]
    cx = margin + POSITIONS[codes[:, 3]] * travel
    cy = margin + POSITIONS[codes[:, 4]] * travel
    # Window of `win` pixels around the centre; it always covers the bounding circle.
    win = math.ceil(2 * radius) + 3
    x0 = np.clip(np.floor(cx).astype(np.int64) - win // 2, 0, size - win)
    y0 = np.clip(np.floor(cy).astype(np.int64) - win // 2, 0, size - win)
    offsets = np.arange(win)
    # Pixel-centre offsets from the shape centre, v pointing up (image rows go down).
    dx = ((x0[:, None] + offsets + 0.5) - cx[:, None]).astype(np.float32)[:, None, :]
    dy = (cy[:, None] - (y0[:, None] + offsets + 0.5)).astype(np.float32)[:, :, None]
    cos = (np.cos(theta) / r).astype(np.float32)[:, None, None]
    sin = (np.sin(theta) / r).astype(np.float32)[:, None, None]
    mask = np.empty((len(codes), win, win), dtype=bool)
    for shape_id, shape_mask in enumerate(SHAPE_MASKS):
        sel = np.flatnonzero(codes[:, 0] == shape_id)
        if sel.size:
            c, s, ddx, ddy = cos[sel], sin[sel], dx[sel], dy[sel]
            # Rotate the frame by -theta so the shape appears rotated by +theta.
            mask[sel] = shape_mask(c * ddx + s * ddy, c * ddy - s * ddx)
    rows = y0[:, None, None] + offsets[None, :, None]
    cols = x0[:, None, None] + offsets[None, None, :]
    out[np.arange(len(codes))[:, None, None], rows, cols] = mask


class ShapesDataset(Dataset):
    """One split of the shapes index space; train/val are a seeded permutation of it."""

    def __init__(self, spec: LoadSpec) -> None:
        if spec.data_path is not None:
            raise DataError("shapes is generated on the fly and takes no data path; drop it")
        if spec.channels not in (None, 1):
            raise DataError("shapes images are grayscale: channels must be 1 or unset")
        size = DEFAULT_SIZE if spec.image_size is None else spec.image_size
        if size < MIN_SIZE:
            raise DataError(f"shapes needs image_size >= {MIN_SIZE}, got {size}")
        spec = spec.replace(image_size=size, channels=1)
        super().__init__(
            spec=spec,
            modality="image",
            input_shape=(1, size, size),
            normalization=Normalization.scaling(1.0, "none: rendered as 0/1 masks"),
            factor_names=FACTOR_NAMES,
            factor_sizes=FACTOR_SIZES,
            notes=["procedural dSprites-like shapes, rendered on demand from the index"],
        )
        self.size = size
        self._rows = split_rows(N_IMAGES, spec, "shapes")
        self._factors: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        return self._rows

    def get_batch(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        return render(self.get_factors(indices), self.size)

    def get_factors(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        # Computed from the index, so a batch never needs the whole (n, 5) table.
        return index_to_factors(self._rows[check_indices(indices, len(self))])

    @property
    def factors(self) -> np.ndarray:
        if self._factors is None:
            self._factors = index_to_factors(self._rows)
        return self._factors
