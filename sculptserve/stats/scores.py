"""Unsupervised scores of a set of embeddings: dependence between dimensions, fit to a prior,
and reconstruction quality. Pure numpy/scipy functions returning small result objects.

LPS lives in :mod:`sculptserve.stats.lps`; MMD in :mod:`sculptserve.stats.mmd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from sculptserve.stats.lps import linear_r2_from_covariance
from sculptserve.stats.results import Result
from sculptserve.stats.validation import EmbeddingError, as_embeddings, constant_dims

if TYPE_CHECKING:
    from sculptserve.stats.priors import Prior


@dataclass(frozen=True)
class TotalCorrelationResult(Result):
    """Gaussian total correlation (nats) and each dimension's Gaussian mutual information
    with all the others, -0.5 log(1 - R^2_i). The per-dimension values do not sum to the total.
    """

    total_correlation: float
    per_dim: tuple[float, ...]


@dataclass(frozen=True)
class CovarianceRatioResult(Result):
    """sum |diag C| / sum |offdiag C| (higher is more independent; inf when C is diagonal),
    and per dimension |C_ii| / sum_{j != i} |C_ij|."""

    covariance_ratio: float
    per_dim: tuple[float, ...]


@dataclass(frozen=True)
class KSResult(Result):
    """Per-dimension Kolmogorov-Smirnov distance of the embeddings to the prior's marginals."""

    ks_max: float
    per_dim: tuple[float, ...]
    p_values: tuple[float, ...]


def _covariance(z: object, name: str = "embeddings") -> np.ndarray:
    arr = as_embeddings(z, name=name, min_rows=3, min_dims=2)
    flat = constant_dims(arr)
    if flat.size:
        raise EmbeddingError(f"{name}: dimension(s) {flat.tolist()} are constant")
    return np.cov(arr, rowvar=False)


def gaussian_total_correlation(z: object) -> TotalCorrelationResult:
    """0.5 * (sum log diag C - log det C): the total correlation of a Gaussian with z's
    covariance. 0 for uncorrelated dimensions; blind to non-linear dependence."""
    cov = _covariance(z)
    std = np.sqrt(np.diag(cov))
    # On the correlation matrix the total is -0.5 log det, and singularity is scale-free.
    eigenvalues = np.linalg.eigvalsh(cov / np.outer(std, std))
    if eigenvalues.min() <= 1e-10:
        raise EmbeddingError(
            "embeddings: covariance is singular (some dimensions are exact linear combinations "
            "of others); total correlation is infinite"
        )
    total = -0.5 * np.log(eigenvalues).sum()
    per_dim = -0.5 * np.log1p(-linear_r2_from_covariance(cov))
    return TotalCorrelationResult(float(total), tuple(float(v) for v in per_dim))


def covariance_ratio(z: object) -> CovarianceRatioResult:
    """The paper's covariance ratio: sum |diag C| / sum |offdiag C|."""
    abs_cov = np.abs(_covariance(z))
    diag = np.diag(abs_cov)
    off_rows = abs_cov.sum(axis=1) - diag
    with np.errstate(divide="ignore"):
        per_dim = diag / off_rows
        ratio = diag.sum() / off_rows.sum()
    return CovarianceRatioResult(float(ratio), tuple(float(v) for v in per_dim))


def ks_statistics(cdf_values: np.ndarray) -> np.ndarray:
    """KS distance per column, given each column's values pushed through the target CDF."""
    u = np.sort(cdf_values, axis=0)
    n = len(u)
    ranks = np.arange(1, n + 1)[:, None]
    return np.maximum((ranks / n - u).max(axis=0), (u - (ranks - 1) / n).max(axis=0))


def ks_to_prior(z: object, prior: Prior) -> KSResult:
    """Per-dimension one-sample KS test of z's marginals against the prior's marginal CDFs.

    The p-values use the exact one-sample distribution (scipy's kstwo); they are exact for
    continuous marginals and approximate for an empirical prior's step CDF.
    """
    arr = as_embeddings(z, min_rows=1)
    if arr.shape[1] != prior.dim:
        raise EmbeddingError(
            f"embeddings have {arr.shape[1]} dimensions but the prior has {prior.dim}"
        )
    distances = ks_statistics(prior.cdf(arr))
    p_values = stats.kstwo.sf(distances, len(arr))
    return KSResult(
        ks_max=float(distances.max()),
        per_dim=tuple(float(v) for v in distances),
        p_values=tuple(float(v) for v in p_values),
    )


def nmse_db(x: object, x_hat: object) -> float:
    """Normalized reconstruction error in dB: 10 log10(sum (x - x_hat)^2 / sum x^2)."""
    target = np.asarray(x, dtype=np.float64)
    recon = np.asarray(x_hat, dtype=np.float64)
    if target.shape != recon.shape:
        raise ValueError(f"shapes differ: inputs {target.shape}, reconstructions {recon.shape}")
    if target.size == 0:
        raise ValueError("inputs are empty")
    energy = float((target**2).sum())
    if energy == 0.0:
        raise ValueError("inputs are all zero: NMSE is undefined")
    with np.errstate(divide="ignore"):  # a perfect reconstruction is -inf dB
        return float(10.0 * np.log10(((target - recon) ** 2).sum() / energy))
