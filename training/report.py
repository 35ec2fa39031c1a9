"""End-of-training report: PNG figures of how well the latents took the prior's shape.

``write_report(out_dir, ...)`` writes five figures into ``out_dir`` (the trainer passes
``<run>/report``) and returns their paths:

- ``marginals.png``: per latent dimension, the latents' histogram against the prior's marginal
  density, with the KS distance (``latent_ks``) in each title.
- ``pairs.png``: lower-triangle scatter of the first up to 5 dimensions, latents over prior
  samples, with both marginals on the diagonal.
- ``traversals.png``: images: one row per dimension, decoded while that dimension sweeps the
  prior's 5%..95% quantiles (8 steps) and the others sit at the prior's per-dimension median.
  Tabular: one panel per dimension with each output feature plotted against the swept value
  (21 steps: lines need more points than an image row).
- ``samples.png``: 64 decoded prior samples (8 x 8) for images; for tabular, histograms of the
  first features of 512 decoded prior samples against the held-out inputs.
- ``reconstructions.png``: rows of inputs above rows of their reconstructions (images), or
  input-vs-reconstruction scatter per feature (tabular), with NMSE in dB.

Decisions:

- numpy in, files out; never torch. ``decode`` is called with float32 ``(m, d)`` arrays
  (m <= max(512, 21 * max_dims) rows) and must return ``(m, *input_shape)``.
- Plotting uses ``matplotlib.figure.Figure`` with ``FigureCanvasAgg`` directly, never pyplot:
  no global figure registry, no backend switch, no display, so it is safe in threads and beside
  other matplotlib users. rcParams are never touched; sizes are passed per call.
- Prior marginal density: the finite-difference derivative of ``prior.cdf`` on a 400-step grid,
  which is exact up to discretization for every analytic kind (mixtures, correlated marginals,
  hybrid blocks included). An empirical marginal's CDF is a step function whose derivative is
  spikes, so for empirical dimensions (also inside hybrids) the curve is instead the bank's
  histogram on the latents' bins, computed exactly as CDF differences over the bin edges.
- Histogram densities divide by the total count, so latents outside the plotted range (beyond
  the 0.1% / 99.9% quantiles) lower the bars instead of being silently renormalized away.
- KS distance: ``sculptserve.stats.scores.ks_statistics`` on ``prior.cdf(latents)``, the same
  number ``sculpt`` reports, equal to ``scipy.stats.kstest`` against the marginal CDF.
- All checks and all decoding happen before the first file is written: a ValueError leaves
  no half-written report behind. Each PNG is written atomically (temp file + rename).
- Traversals hold the other dimensions at the prior's per-dimension median (``ppf(0.5)``), as
  asked; for a symmetric bimodal prior that is the low-density point between the modes, so
  those rows show decodes of a region the model rarely saw in training.
- With more than ``max_dims`` latent dimensions the first ``max_dims`` are shown (stable across
  runs and easy to compare); the titles say how many there are in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sculptserve.files import atomic_path
from sculptserve.stats.scores import ks_statistics, nmse_db
from sculptserve.stats.validation import as_embeddings

if TYPE_CHECKING:
    from sculptserve.stats.priors import Prior

__all__ = [
    "MODALITIES",
    "REPORT_FILES",
    "latent_ks",
    "marginals_figure",
    "pairs_figure",
    "reconstructions_figure",
    "samples_figure",
    "save_figure",
    "traversals_figure",
    "write_report",
]

MODALITIES = ("image", "tabular")
REPORT_FILES = (
    "marginals.png",
    "pairs.png",
    "traversals.png",
    "samples.png",
    "reconstructions.png",
)

DPI = 90
LATENT_COLOR = "#1f77b4"  # blue: the model's latents / outputs
PRIOR_COLOR = "#e6550d"  # orange: the prior / reference data
TRAVERSAL_QUANTILES = np.linspace(0.05, 0.95, 8)
TABULAR_TRAVERSAL_QUANTILES = np.linspace(0.05, 0.95, 21)
MAX_PAIR_DIMS = 5
MAX_PAIR_POINTS = 2000  # more points only overplot and slow the scatter down
MAX_FEATURES = 6  # tabular panels: beyond this a figure stops being readable
IMAGE_SAMPLE_GRID = 8
TABULAR_SAMPLES = 512
MAX_RECON_IMAGES = 16  # two pairs of rows of 8
_GRID_STEPS = 400
_TITLE = 9
_LABEL = 8
_TICK = 7


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def latent_ks(latents: np.ndarray, prior: Prior) -> np.ndarray:
    """(d,) KS distance sup_x |F_latents(x) - F_prior(x)| of each dimension to its marginal."""
    arr = _check_latents(latents, prior)
    return ks_statistics(prior.cdf(arr))


def _marginal_kinds(prior: Prior) -> list[str]:
    """The kind of each dimension's marginal, looking through hybrid blocks."""
    components = getattr(prior, "components", None)
    if components:
        return [kind for comp in components for kind in _marginal_kinds(comp)]
    return [str(getattr(prior, "kind", ""))] * prior.dim


def _ranges(latents: np.ndarray, prior: Prior, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """(d,) low/high plot limits covering the prior's and the latents' central 1 - 2 tail."""
    d = prior.dim
    qs = prior.ppf(np.array([[tail] * d, [1.0 - tail] * d]))
    lat = np.quantile(latents, [tail, 1.0 - tail], axis=0)
    low = np.minimum(qs[0], lat[0])
    high = np.maximum(qs[1], lat[1])
    span = np.maximum(high - low, 1e-6 * np.maximum(1.0, np.abs(low)))
    return low - 0.05 * span, high + 0.05 * span


def _n_bins(n: int) -> int:
    return int(np.clip(round(math.sqrt(n)), 10, 50))


def _density_on_edges(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram density normalized by the total count (mass outside the edges is lost)."""
    counts, _ = np.histogram(values, bins=edges)
    return counts / (max(len(values), 1) * np.diff(edges))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _grid_shape(k: int, max_cols: int = 5) -> tuple[int, int]:
    cols = min(k, max_cols)
    return math.ceil(k / cols), cols


def _grid_figure(
    rows: int,
    cols: int,
    *,
    ax_w: float = 1.85,
    ax_h: float = 1.3,
    wspace: float = 0.45,
    hspace: float = 0.7,
    left: float = 0.6,
    bottom: float = 0.5,
    title_lines: int = 2,
) -> Figure:
    """A figure for a rows x cols grid of axes with fixed margins in inches.

    Fixed margins instead of a layout engine: constrained layout costs about 0.3 s a grid
    figure here, and the sizes are known because every figure is sized from its grid.
    """
    top = 0.35 + 0.19 * title_lines  # the suptitle's lines plus the first row's axes titles
    width = left + cols * ax_w + (cols - 1) * wspace + 0.2
    height = bottom + rows * ax_h + (rows - 1) * hspace + top
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width,
        right=1 - 0.2 / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace / ax_w,
        hspace=hspace / ax_h,
    )
    return fig


def _suptitle(fig: Figure, text: str) -> None:
    height = fig.get_figheight()
    fig.suptitle(text, fontsize=_TITLE + 1, y=1 - 0.08 / height, va="top")


def _bottom_legend(fig: Figure, handles: list[Line2D]) -> None:
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncols=len(handles),
        fontsize=_LABEL,
        frameon=False,
    )


def _style(ax: Axes) -> None:
    ax.tick_params(labelsize=_TICK, length=2, pad=1)
    ax.locator_params(nbins=5)  # small panels: fewer ticks, no overlapping labels


def _dims_note(k: int, d: int) -> str:
    if k == d:
        return "1 dim" if d == 1 else f"all {d} dims"
    return f"first {k} of {d} dims"


def marginals_figure(
    latents: np.ndarray, prior: Prior, *, max_dims: int = 10, ks: np.ndarray | None = None
) -> Figure:
    """Histogram of each latent dimension against the prior's marginal density."""
    latents = _check_latents(latents, prior)
    n, d = latents.shape
    ks = latent_ks(latents, prior) if ks is None else ks
    k = min(d, max_dims)
    rows, cols = _grid_shape(k)
    fig = _grid_figure(rows, cols, hspace=0.5)

    low, high = _ranges(latents, prior, 1e-3)
    bins = _n_bins(n)
    edges = np.linspace(low, high, bins + 1)  # (bins + 1, d)
    grid = np.linspace(low, high, _GRID_STEPS + 1)
    grid_density = np.diff(prior.cdf(grid), axis=0) / np.diff(grid, axis=0)
    bin_density = np.diff(prior.cdf(edges), axis=0) / np.diff(edges, axis=0)
    kinds = _marginal_kinds(prior)

    for j in range(k):
        ax = fig.add_subplot(rows, cols, j + 1)
        _style(ax)
        ax.stairs(
            _density_on_edges(latents[:, j], edges[:, j]),
            edges[:, j],
            fill=True,
            alpha=0.45,
            color=LATENT_COLOR,
            label="latents",
        )
        if kinds[j] == "empirical":
            ax.stairs(bin_density[:, j], edges[:, j], color=PRIOR_COLOR, lw=1.4, label="prior")
        else:
            mid = 0.5 * (grid[1:, j] + grid[:-1, j])
            ax.plot(mid, grid_density[:, j], color=PRIOR_COLOR, lw=1.4, label="prior")
        ax.set_xlim(low[j], high[j])
        ax.set_title(f"z{j}   KS = {ks[j]:.3f}", fontsize=_TITLE)
        if j % cols == 0:
            ax.set_ylabel("density", fontsize=_LABEL)
        if j >= k - cols:
            ax.set_xlabel("latent value", fontsize=_LABEL)
        if j == 0:
            ax.legend(fontsize=_TICK, frameon=False, loc="upper left")
    _suptitle(
        fig,
        f"Latent marginals vs. {_prior_name(prior)} prior ({_dims_note(k, d)}, n = {n});\n"
        "KS = max |latent CDF - prior CDF|",
    )
    return fig


def pairs_figure(
    latents: np.ndarray,
    prior: Prior,
    *,
    seed: int | np.random.SeedSequence = 0,
    max_dims: int = 5,
) -> Figure:
    """Lower-triangle pairwise scatter of the first up to 5 dims: latents over prior samples."""
    latents = _check_latents(latents, prior)
    n, d = latents.shape
    k = min(d, max_dims, MAX_PAIR_DIMS)
    rng = np.random.default_rng(seed)
    if n > MAX_PAIR_POINTS:
        latents = latents[rng.choice(n, MAX_PAIR_POINTS, replace=False)]
    ref = np.asarray(prior.sample(len(latents), rng), dtype=np.float64)
    both = np.concatenate([latents, ref])
    low, high = _ranges(both, prior, 5e-3)
    bins = _n_bins(len(latents))

    size = max(1.45, 3.0 / k)  # a 1-D latent space still gets a readable panel
    fig = _grid_figure(k, k, ax_w=size, ax_h=size, wspace=0.12, hspace=0.12, title_lines=2)
    marker = {"s": 3, "linewidths": 0, "alpha": 0.35}
    for i in range(k):
        for j in range(i + 1):
            ax = fig.add_subplot(k, k, i * k + j + 1)
            _style(ax)
            if i == j:  # diagonal: both marginals, so a 1-D latent space still gets a figure
                edges = np.linspace(low[j], high[j], bins + 1)
                ax.stairs(_density_on_edges(latents[:, j], edges), edges, color=LATENT_COLOR)
                ax.stairs(_density_on_edges(ref[:, j], edges), edges, color=PRIOR_COLOR)
                ax.set_yticks([])
            else:
                ax.scatter(ref[:, j], ref[:, i], color=PRIOR_COLOR, **marker)
                ax.scatter(latents[:, j], latents[:, i], color=LATENT_COLOR, **marker)
                ax.set_ylim(low[i], high[i])
            ax.set_xlim(low[j], high[j])
            if i == k - 1:
                ax.set_xlabel(f"z{j}", fontsize=_LABEL)
            else:
                ax.tick_params(labelbottom=False)
            if j == 0 and i > 0:
                ax.set_ylabel(f"z{i}", fontsize=_LABEL)
            elif i != j:
                ax.tick_params(labelleft=False)
    handles = [
        Line2D([], [], ls="", marker="o", color=LATENT_COLOR, label=f"latents (n = {len(ref)})"),
        Line2D([], [], ls="", marker="o", color=PRIOR_COLOR, label="prior samples"),
    ]
    _suptitle(fig, f"Pairwise latents vs. {_prior_name(prior)} prior ({_dims_note(k, d)})")
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.3 / fig.get_figheight()),
        ncols=2,
        fontsize=_LABEL,
        frameon=False,
    )
    return fig


def _image_axes(fig: Figure, mosaic: np.ndarray) -> Axes:
    ax = fig.add_subplot(1, 1, 1)
    gray = mosaic.ndim == 2
    ax.imshow(mosaic, cmap="gray" if gray else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0, labelsize=_TICK)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _cell_centers(count: int, size: int, pad: int) -> np.ndarray:
    return pad + np.arange(count) * (size + pad) + (size - 1) / 2


def _image_figsize(
    rows: int, cols: int, *, left: float = 0.2, extra: float = 0.6
) -> tuple[float, float]:
    """Inches for a rows x cols mosaic: ~0.8 in a tile, never too narrow for its title."""
    cell = min(0.8, 6.5 / cols)
    return (max(4.8, cols * cell + left + 0.2), rows * cell + extra)


def traversals_figure(
    values: np.ndarray,
    outputs: np.ndarray,
    quantiles: np.ndarray,
    modality: str,
    *,
    d: int | None = None,
) -> Figure:
    """Decoded traversals: ``values`` (steps, k) swept values, ``outputs`` (k, steps, ...)."""
    k, steps = outputs.shape[:2]
    note = _dims_note(k, d or k)
    if modality == "image":
        images = _display_images(outputs)  # (k, steps, H, W[, 3])
        mosaic = _tile(images)
        h, w = images.shape[2:4]
        fig = Figure(figsize=_image_figsize(k, steps, left=1.0, extra=1.0), dpi=DPI)
        fig.set_layout_engine("constrained")
        ax = _image_axes(fig, mosaic)
        ax.set_yticks(
            _cell_centers(k, h, _PAD),
            [f"z{j}\n{values[0, j]:.3g} .. {values[-1, j]:.3g}" for j in range(k)],
        )
        ax.set_xticks(_cell_centers(steps, w, _PAD), [f"{q:.2f}" for q in quantiles])
        ax.set_xlabel("prior quantile of the swept dimension", fontsize=_LABEL)
        ax.set_title(
            f"Latent traversals ({note}): row = swept dimension (range shown),\n"
            "others at the prior median",
            fontsize=_TITLE,
        )
        return fig

    rows, cols = _grid_shape(k)
    features = min(outputs.shape[2], MAX_FEATURES)
    fig = _grid_figure(rows, cols, bottom=0.8)
    colors = [f"C{f}" for f in range(features)]
    for j in range(k):
        ax = fig.add_subplot(rows, cols, j + 1)
        _style(ax)
        for f in range(features):
            ax.plot(values[:, j], outputs[j, :, f], color=colors[f], lw=1.2)
        ax.set_title(f"sweep z{j}", fontsize=_TITLE)
        ax.set_xlabel(f"z{j} (5%..95% prior quantile)", fontsize=_LABEL)
        if j % cols == 0:
            ax.set_ylabel("decoded value", fontsize=_LABEL)
    handles = [Line2D([], [], color=colors[f], label=f"x{f}") for f in range(features)]
    _bottom_legend(fig, handles)
    _suptitle(
        fig,
        f"Latent traversals ({note}): decoded features (first {features} of "
        f"{outputs.shape[2]})\nas one dim sweeps, others at the prior median",
    )
    return fig


def samples_figure(
    decoded: np.ndarray, inputs: np.ndarray, modality: str, *, prior_name: str = "the"
) -> Figure:
    """Decoded prior samples: an 8 x 8 image grid, or feature histograms against the inputs."""
    if modality == "image":
        images = _display_images(decoded)
        side = math.isqrt(len(images))
        grid = images[: side * side].reshape(side, side, *images.shape[1:])
        fig = Figure(figsize=_image_figsize(side, side, extra=0.5), dpi=DPI)
        fig.set_layout_engine("constrained")
        ax = _image_axes(fig, _tile(grid))
        ax.set_title(f"Decoded samples from {prior_name} prior ({side} x {side})", fontsize=_TITLE)
        return fig

    features = min(decoded.shape[1], MAX_FEATURES)
    rows, cols = _grid_shape(features, 3)
    fig = _grid_figure(rows, cols, bottom=0.8)
    for f in range(features):
        ax = fig.add_subplot(rows, cols, f + 1)
        _style(ax)
        gen = decoded[:, f][np.isfinite(decoded[:, f])]
        ref = inputs[:, f]
        pooled = np.concatenate([gen, ref])
        lo, hi = np.quantile(pooled, [0.005, 0.995]) if pooled.size else (0.0, 1.0)
        span = max(hi - lo, 1e-6 * max(1.0, abs(lo)))
        edges = np.linspace(lo - 0.05 * span, hi + 0.05 * span, _n_bins(len(gen)) + 1)
        ax.stairs(_density_on_edges(gen, edges), edges, fill=True, alpha=0.45, color=LATENT_COLOR)
        ax.stairs(_density_on_edges(ref, edges), edges, color=PRIOR_COLOR, lw=1.4)
        ax.set_title(f"feature x{f}", fontsize=_TITLE)
        ax.set_xlabel("value", fontsize=_LABEL)
        if f % cols == 0:
            ax.set_ylabel("density", fontsize=_LABEL)
    gen_label = f"decoded prior samples (n = {len(decoded)})"
    handles = [
        Line2D([], [], color=LATENT_COLOR, lw=4, alpha=0.45, label=gen_label),
        Line2D([], [], color=PRIOR_COLOR, lw=1.4, label=f"held-out inputs (n = {len(inputs)})"),
    ]
    _bottom_legend(fig, handles)
    _suptitle(
        fig,
        f"Decoded samples from {prior_name} prior vs. held-out inputs\n"
        f"(first {features} of {decoded.shape[1]} features)",
    )
    return fig


def reconstructions_figure(
    inputs: np.ndarray, reconstructions: np.ndarray, modality: str
) -> Figure:
    """Inputs above their reconstructions (images) or input-vs-reconstruction scatter (tabular)."""
    nmse = _nmse_text(inputs, reconstructions)
    if modality == "image":
        shown = min(len(inputs), MAX_RECON_IMAGES)
        cols = min(shown, 8)
        pairs = math.ceil(shown / cols)
        x, r = _display_images(inputs[:shown]), _display_images(reconstructions[:shown])
        grid = np.ones((2 * pairs, cols, *x.shape[1:]))  # white: empty cells in a short last row
        for p in range(pairs):
            chunk = slice(p * cols, min((p + 1) * cols, shown))
            width = chunk.stop - chunk.start
            grid[2 * p, :width] = x[chunk]
            grid[2 * p + 1, :width] = r[chunk]
        fig = Figure(figsize=_image_figsize(2 * pairs, cols, left=0.7, extra=0.5), dpi=DPI)
        fig.set_layout_engine("constrained")
        ax = _image_axes(fig, _tile(grid))
        ax.set_yticks(_cell_centers(2 * pairs, x.shape[1], _PAD), ["input", "reconstr."] * pairs)
        ax.set_title(
            f"Held-out inputs and their reconstructions\n({shown} of {len(inputs)}; {nmse})",
            fontsize=_TITLE,
        )
        return fig

    features = min(inputs.shape[1], MAX_FEATURES)
    rows, cols = _grid_shape(features, 3)
    fig = _grid_figure(rows, cols, ax_h=1.85, left=0.7)
    for f in range(features):
        ax = fig.add_subplot(rows, cols, f + 1)
        _style(ax)
        xin, xrec = inputs[:, f], reconstructions[:, f]
        ax.scatter(xin, xrec, s=6, alpha=0.6, linewidths=0, color=LATENT_COLOR)
        finite = np.concatenate([xin, xrec[np.isfinite(xrec)]])
        lo, hi = float(finite.min()), float(finite.max())
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")  # perfect reconstruction
        with np.errstate(invalid="ignore"):
            mse = float(np.mean((xin - xrec) ** 2))
        ax.set_title(f"feature x{f}   MSE = {mse:.3g}", fontsize=_TITLE)
        ax.set_xlabel("input", fontsize=_LABEL)
        if f % cols == 0:
            ax.set_ylabel("reconstruction", fontsize=_LABEL)
    _suptitle(
        fig,
        f"Reconstructions of {len(inputs)} held-out rows (first {features} of "
        f"{inputs.shape[1]} features)\n{nmse}; dashed line: perfect reconstruction",
    )
    return fig


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

_PAD = 2  # white pixels between tiles


def _display_images(x: np.ndarray) -> np.ndarray:
    """(..., C, H, W) in [0, 1] -> (..., H, W) gray or (..., H, W, 3) RGB, clipped to [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    channels = x.shape[-3]
    if channels == 1:
        return x[..., 0, :, :]
    return np.moveaxis(x, -3, -1)  # channel-first -> channel-last for imshow


def _tile(grid: np.ndarray, pad: int = _PAD, fill: float = 1.0) -> np.ndarray:
    """(rows, cols, H, W[, 3]) -> one mosaic with ``pad`` pixels of ``fill`` around each tile."""
    rows, cols, h, w = grid.shape[:4]
    extra = [(0, 0)] * (grid.ndim - 4)
    padded = np.pad(grid, [(0, 0), (0, 0), (pad, 0), (pad, 0), *extra], constant_values=fill)
    # (rows, cols, H', W', ...) -> (rows, H', cols, W', ...) -> (rows H', cols W', ...)
    mosaic = np.swapaxes(padded, 1, 2).reshape(rows * (h + pad), cols * (w + pad), *grid.shape[4:])
    return np.pad(mosaic, [(0, pad), (0, pad), *extra], constant_values=fill)


# ---------------------------------------------------------------------------------------------
# Checks, decoding and the entry point
# ---------------------------------------------------------------------------------------------


def _prior_name(prior: Prior) -> str:
    return f"the {getattr(prior, 'kind', type(prior).__name__)}"


def _nmse_text(inputs: np.ndarray, reconstructions: np.ndarray) -> str:
    try:
        return f"NMSE = {nmse_db(inputs, reconstructions):.1f} dB"
    except ValueError:  # all-zero inputs: NMSE undefined
        return "NMSE undefined (inputs all zero)"


def _check_latents(latents: np.ndarray, prior: Prior) -> np.ndarray:
    # EmbeddingError (a ValueError) names NaN/Inf rows, wrong rank and empty arrays
    arr = as_embeddings(latents, name="latents", min_rows=2)
    if arr.shape[1] != prior.dim:
        raise ValueError(f"latents have {arr.shape[1]} dimensions but the prior has {prior.dim}")
    return arr


def _check_data(inputs: np.ndarray, reconstructions: np.ndarray, modality: str):
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)} (got {modality!r})")
    x = np.asarray(inputs, dtype=np.float64)
    r = np.asarray(reconstructions, dtype=np.float64)
    if x.shape != r.shape:
        raise ValueError(
            f"inputs and reconstructions must have the same shape (got {x.shape} and {r.shape})"
        )
    if len(x) == 0:
        raise ValueError("inputs are empty: the report needs at least one held-out example")
    if modality == "image":
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"image inputs must have shape (n, C, H, W) with C = 1 or 3 (got {x.shape})"
            )
    elif x.ndim != 2:
        raise ValueError(f"tabular inputs must have shape (n, features) (got {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError("inputs contain NaN or Inf")
    return x, r


def _decode(decode: Callable[[np.ndarray], np.ndarray], z: np.ndarray, shape: Sequence[int]):
    out = np.asarray(decode(z.astype(np.float32)), dtype=np.float64)
    expected = (len(z), *shape)
    if out.shape != expected:
        raise ValueError(
            f"decode returned shape {out.shape} for {len(z)} latents; expected {expected} "
            "(the inputs' per-example shape)"
        )
    return out


def _traverse(
    prior: Prior,
    decode: Callable[[np.ndarray], np.ndarray],
    shape: Sequence[int],
    k: int,
    quantiles: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sweep each of the first k dims over prior quantiles, others at the per-dim median."""
    d, steps = prior.dim, len(quantiles)
    values = prior.ppf(np.repeat(quantiles[:, None], d, axis=1))  # (steps, d)
    base = prior.ppf(np.full((1, d), 0.5))[0]
    z = np.tile(base, (k, steps, 1))  # (k, steps, d)
    for j in range(k):
        z[j, :, j] = values[:, j]
    out = _decode(decode, z.reshape(k * steps, d), shape)
    return values[:, :k], out.reshape(k, steps, *shape)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` with Agg into the PNG ``path`` atomically; return the path."""
    FigureCanvasAgg(fig)  # attaches itself to fig: Agg renders, whatever pyplot's backend is
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return path


def write_report(
    out_dir: str | Path,
    *,
    latents: np.ndarray,
    prior: Prior,
    decode: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    reconstructions: np.ndarray,
    modality: str,
    seed: int = 0,
    max_dims: int = 10,
) -> list[Path]:
    """Write the report PNGs (``REPORT_FILES``, in that order) into ``out_dir``; return paths.

    ``latents`` (n, d) are encoded held-out examples; ``inputs``/``reconstructions`` are a few
    held-out examples ((n, C, H, W) in [0, 1] for "image", (n, F) for "tabular") and the
    model's reconstructions of them. Raises ValueError on mismatched shapes, NaN/Inf latents,
    a latent dimension that differs from the prior's, or a decode output of the wrong shape.
    """
    z = _check_latents(latents, prior)
    x, r = _check_data(inputs, reconstructions, modality)
    if isinstance(max_dims, bool) or not isinstance(max_dims, int | np.integer) or max_dims < 1:
        raise ValueError(f"max_dims must be a positive integer (got {max_dims!r})")
    k = min(prior.dim, int(max_dims))
    shape = x.shape[1:]
    seeds = np.random.SeedSequence(seed).spawn(2)

    # decode everything first: a bad decode raises before any file is written
    quantiles = TRAVERSAL_QUANTILES if modality == "image" else TABULAR_TRAVERSAL_QUANTILES
    values, traversed = _traverse(prior, decode, shape, k, quantiles)
    n_samples = IMAGE_SAMPLE_GRID**2 if modality == "image" else TABULAR_SAMPLES
    prior_z = np.asarray(prior.sample(n_samples, np.random.default_rng(seeds[0])))
    decoded = _decode(decode, prior_z, shape)

    figures = {
        "marginals.png": lambda: marginals_figure(z, prior, max_dims=k),
        "pairs.png": lambda: pairs_figure(z, prior, seed=seeds[1], max_dims=k),
        "traversals.png": lambda: traversals_figure(
            values, traversed, quantiles, modality, d=z.shape[1]
        ),
        "samples.png": lambda: samples_figure(decoded, x, modality, prior_name=_prior_name(prior)),
        "reconstructions.png": lambda: reconstructions_figure(x, r, modality),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # build one figure at a time so only one is alive in memory
    return [save_figure(build(), out / name) for name, build in figures.items()]
