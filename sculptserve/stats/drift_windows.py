"""Window statistics for online drift monitoring, and their null calibration.

The service keeps a window of recently served embeddings and compares it with the bundle's
reference embeddings through two statistics:

- ``mmd2``: unbiased MMD^2 between the window and (a fixed subsample of) the reference, with
  the kernel's scale frozen at the reference's (so it does not move from window to window);
- ``lps_linear``: the window's in-sample linear LPS (mean of 1 - 1 / (C_ii P_ii)), which
  rises when dimensions start to predict each other.

Export calibrates both on held-out embeddings that are *not* in the reference: windows are
resampled from that pool, and each alarm threshold is the (1 - false_alarm_rate) quantile of
the statistic over those null windows. The same functions run at export and in the service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sculptserve.stats.lps import linear_r2_from_covariance
from sculptserve.stats.mmd import Kernel, get_kernel, pairwise_sq_dists
from sculptserve.stats.results import Result
from sculptserve.stats.validation import as_embeddings


@dataclass(frozen=True)
class WindowStatistics(Result):
    mmd2: float
    lps_linear: float
    mean_shift: tuple[float, ...]  # per dimension, (window mean - reference mean) / reference std
    std_ratio: tuple[float, ...]  # per dimension, window std / reference std


@dataclass(frozen=True)
class DriftThresholds(Result):
    """What export stores in the bundle manifest (``drift``)."""

    window: int
    false_alarm_rate: float
    n_resamples: int
    kernel: str
    bandwidth: float
    reference_rows: int
    mmd2_threshold: float
    lps_linear_threshold: float
    reference_lps_linear: float
    null_mmd2_mean: float
    null_lps_linear_mean: float


def window_lps_linear(window: np.ndarray) -> float:
    """In-sample linear LPS of a window (no fitting: one covariance and its inverse)."""
    return float(linear_r2_from_covariance(np.cov(window, rowvar=False)).mean())


class WindowScorer:
    """Scores windows against one reference; the reference-only parts are computed once.

    The unbiased MMD^2 splits into a window-window, a window-reference and a
    reference-reference term. With the kernel's scale frozen at the reference's, the last one
    is a constant, so each window costs n^2 + n*m kernel entries instead of (n + m)^2.
    """

    def __init__(self, reference: np.ndarray, kernel: str | Kernel = "rbf") -> None:
        self.reference = as_embeddings(reference, name="reference", min_rows=4, min_dims=2)
        self.kernel = get_kernel(kernel).fixed_to(self.reference)
        self.mean = self.reference.mean(axis=0)
        self.std = self.reference.std(axis=0)
        self.std[self.std == 0] = 1.0
        d2_ref = _self_distances(self.reference)
        self._base = self.kernel.base_scale(self.reference, d2_ref, n_self=len(self.reference))
        self._ref_term = _mean_off_diagonal(self.kernel(d2_ref, self._base))

    def window_mmd2(self, window: np.ndarray) -> float:
        """Unbiased MMD^2 of ``window`` against the reference (equals ``mmd.mmd2``)."""
        k_ww = self.kernel(_self_distances(window), self._base)
        k_wr = self.kernel(pairwise_sq_dists(window, self.reference), self._base)
        return float(_mean_off_diagonal(k_ww) + self._ref_term - 2.0 * k_wr.mean())

    def score(self, window: np.ndarray) -> WindowStatistics:
        win = as_embeddings(window, name="window", min_rows=4, min_dims=2)
        if win.shape[1] != self.reference.shape[1]:
            raise ValueError(
                f"window has {win.shape[1]} dimensions, the reference {self.reference.shape[1]}"
            )
        return WindowStatistics(
            mmd2=self.window_mmd2(win),
            lps_linear=window_lps_linear(win),
            mean_shift=tuple(((win.mean(axis=0) - self.mean) / self.std).tolist()),
            std_ratio=tuple((win.std(axis=0) / self.std).tolist()),
        )


def _self_distances(z: np.ndarray) -> np.ndarray:
    d2 = pairwise_sq_dists(z, z)
    np.fill_diagonal(d2, 0.0)
    return d2


def _mean_off_diagonal(k: np.ndarray) -> float:
    n = len(k)
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


def calibrate_drift(
    pool: np.ndarray,
    reference: np.ndarray,
    *,
    window: int = 256,
    false_alarm_rate: float = 0.01,
    n_resamples: int = 200,
    kernel: str = "rbf",
    reference_rows: int = 512,
    seed: int = 0,
) -> DriftThresholds:
    """Null thresholds for window statistics from windows resampled out of ``pool``.

    ``pool`` holds held-out embeddings disjoint from ``reference``; windows are drawn without
    replacement within a window (with replacement across windows). The MMD compares against
    the first ``reference_rows`` rows of the reference (the service does the same).
    """
    pool = as_embeddings(pool, name="calibration pool", min_rows=4, min_dims=2)
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    if window > len(pool):
        raise ValueError(
            f"the calibration pool has {len(pool)} held-out rows, fewer than one window of "
            f"{window}; lower the window or export with more held-out data"
        )
    scorer = WindowScorer(np.asarray(reference)[:reference_rows], kernel)
    rng = np.random.default_rng(seed)
    null = [
        scorer.score(pool[rng.choice(len(pool), size=window, replace=False)])
        for _ in range(n_resamples)
    ]
    mmd_null = np.array([s.mmd2 for s in null])
    lps_null = np.array([s.lps_linear for s in null])
    q = 1.0 - false_alarm_rate
    return DriftThresholds(
        window=window,
        false_alarm_rate=false_alarm_rate,
        n_resamples=n_resamples,
        kernel=kernel,
        bandwidth=float(scorer.kernel.fixed_scale),
        reference_rows=len(scorer.reference),
        mmd2_threshold=float(np.quantile(mmd_null, q)),
        lps_linear_threshold=float(np.quantile(lps_null, q)),
        reference_lps_linear=window_lps_linear(np.asarray(reference, dtype=np.float64)),
        null_mmd2_mean=float(mmd_null.mean()),
        null_lps_linear_mean=float(lps_null.mean()),
    )
