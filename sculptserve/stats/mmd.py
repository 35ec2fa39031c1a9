"""Maximum Mean Discrepancy (MMD) between two samples, one implementation for numpy and torch.

The same code serves drift monitoring (numpy, float64 or float32) and training (torch tensors on
CPU or CUDA, differentiable with autograd): every array operation goes through the namespace
returned by ``array_api_compat.array_namespace``. This module never imports torch, so the
serving path stays torch-free.

Kernels are multi-scale sums whose base scale is computed from the *pooled* sample (x and y
together) without gradient:

- ``rbf``: sum over s in s_base * (0.5, 1, 2) of exp(-d2 / (2 s^2)), s_base = median pairwise
  Euclidean distance (the paper's kernel).
- ``imq``: sum over c in C_base * (0.1, 0.2, 0.5, 1, 2, 5, 10) of c / (c + d2),
  C_base = 2 * d * sigma2 (the WAE kernel).

Because the base scale depends only on the pooled sample, it is invariant to relabelling, so a
permutation test may permute one precomputed pooled kernel matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace
from array_api_compat import device as _device

Array = Any  # a numpy array or a torch tensor (anything array_api_compat understands)

# Floor for a degenerate base scale (all points identical): keeps kernels finite.
_SCALE_FLOOR = 1e-12
# Budget for one chunk of the vectorized permutation test (the (B, N) float64 buffers).
_PERM_CHUNK_BYTES = 32 * 2**20


def _stop_gradient(a: Array) -> Array:
    """Cut ``a`` out of the autograd graph (the array API has no stop-gradient)."""
    detach = getattr(a, "detach", None)
    return detach() if callable(detach) else a


def _scalar(xp: Any, value: float, like: Array) -> Array:
    """A 0-d array holding ``value`` with the dtype and device of ``like``."""
    return xp.asarray(value, dtype=like.dtype, device=_device(like))


def _finish(xp: Any, value: Array) -> Array:
    """numpy results become Python floats; torch results stay 0-d tensors (with grad)."""
    return float(value) if is_numpy_namespace(xp) else value


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


def pairwise_sq_dists(a: Array, b: Array) -> Array:
    """Squared Euclidean distances between the rows of ``a`` (n, d) and ``b`` (m, d): (n, m).

    Uses ||a||^2 + ||b||^2 - 2 a.b after shifting both by the (detached) mean of ``a``, which
    leaves distances unchanged but limits cancellation; the result is clamped at 0.
    """
    xp = array_namespace(a, b)
    shift = _stop_gradient(xp.mean(a, axis=0, keepdims=True))
    a = a - shift
    b = b - shift
    a2 = xp.sum(a * a, axis=1)
    b2 = xp.sum(b * b, axis=1)
    d2 = a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)
    return xp.clip(d2, min=0.0)


def _self_sq_dists(z: Array) -> Array:
    """Pairwise squared distances of ``z`` with an exactly zero diagonal."""
    xp = array_namespace(z)
    d2 = pairwise_sq_dists(z, z)
    n = z.shape[0]
    # Multiplying (instead of assigning) keeps this functional for autograd.
    off = 1.0 - xp.eye(n, dtype=d2.dtype, device=_device(d2))
    return d2 * off


def _rowwise_sq_dists(a: Array, b: Array) -> Array:
    """||a_i - b_i||^2 for matching rows: (n,)."""
    xp = array_namespace(a, b)
    diff = a - b
    return xp.sum(diff * diff, axis=1)


def _median_distance(d2: Array, n_self: int = 0) -> Array:
    """Median Euclidean distance from squared distances, ignoring the ``n_self`` smallest.

    Exact order statistics, averaging the two middle values, identically on numpy and torch
    (``torch.median`` would return the lower middle). With a full (N, N) matrix and
    ``n_self = N`` the N diagonal zeros come first in sorted order and are skipped; each
    remaining pair appears twice, which leaves the median equal to that of the unique pairs.
    """
    xp = array_namespace(d2)
    flat = xp.reshape(d2, (-1,))
    count = flat.shape[0] - n_self
    if count < 1:
        raise ValueError("need at least one pair of distinct points to compute a median")
    lo, hi = _order_stats(flat, n_self + (count - 1) // 2, n_self + count // 2)
    return 0.5 * (xp.sqrt(lo) + xp.sqrt(hi))


def _order_stats(flat: Array, i: int, j: int) -> tuple[Array, Array]:
    """The i-th and j-th smallest entries (0-based) of a 1-D array.

    Torch tensors use selection (``kthvalue``): on CPU a full ``torch.sort`` of 10^6 values
    is about 8x slower. Everything else sorts (numpy's SIMD sort beats its partition).
    """
    kth = getattr(flat, "kthvalue", None)
    if callable(kth):
        lo = kth(i + 1).values
        return lo, (lo if j == i else kth(j + 1).values)
    xp = array_namespace(flat)
    srt = xp.sort(flat, stable=False)  # ties do not matter for order statistics
    return srt[i], srt[j]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


class Kernel:
    """A multi-scale kernel k(a, b) = f(||a - b||^2; base).

    Two jobs, kept apart so a caller can compute the base scale once (without gradient) and
    reuse it: :meth:`base_scale` and :meth:`__call__`.
    """

    name: ClassVar[str] = ""

    def base_scale(self, z: Array, d2: Array, n_self: int = 0) -> Array:
        """Base scale (0-d array, no gradient) from the pooled sample.

        ``z`` is the pooled sample (N, d); ``d2`` holds squared distances of pairs from it (any
        shape); its ``n_self`` smallest entries are self-distances (zeros) to ignore.
        """
        raise NotImplementedError

    def __call__(self, d2: Array, base: Array) -> Array:
        """Kernel values from squared distances ``d2`` (any shape) for a given base scale."""
        raise NotImplementedError

    def fixed_to(self, reference: np.ndarray) -> Kernel:
        """A copy whose base scale is frozen at the one ``reference`` (n, d) gives.

        For monitoring many windows against one reference: the kernel then stays the same
        from window to window, and calibrated thresholds keep their meaning.
        """
        raise NotImplementedError

    @property
    def fixed_scale(self) -> float | None:
        """The frozen base-scale parameter, or None when it is data-driven."""
        raise NotImplementedError


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(not (s > 0.0 and np.isfinite(s)) for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}")
    return scales


def _squaring_powers(scales: tuple[float, ...]) -> list[int] | None:
    """The powers (s_max / s)^2, ascending, if each is a power of two (reachable by repeated
    squaring); else None."""
    widest = max(scales)
    powers = sorted((widest / s) ** 2 for s in scales)
    exact = [round(p) for p in powers]
    if any(abs(p - e) > 1e-12 * e or e & (e - 1) for p, e in zip(powers, exact, strict=True)):
        return None
    return exact


@dataclass(frozen=True)
class RBFKernel(Kernel):
    """Sum of Gaussian kernels exp(-d2 / (2 s^2)) for s in s_base * scales.

    ``bandwidth=None`` uses the median heuristic on the pooled sample; a number fixes s_base.
    """

    name: ClassVar[str] = "rbf"
    scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", _check_scales(self.scales))
        if self.bandwidth is not None and not (self.bandwidth > 0 and np.isfinite(self.bandwidth)):
            raise ValueError(f"bandwidth must be a positive number, got {self.bandwidth}")

    def base_scale(self, z: Array, d2: Array, n_self: int = 0) -> Array:
        xp = array_namespace(d2)
        d2 = _stop_gradient(d2)
        if self.bandwidth is not None:
            return _scalar(xp, self.bandwidth, d2)
        s = _median_distance(d2, n_self)
        return xp.maximum(s, _scalar(xp, _SCALE_FLOOR, s))

    def fixed_to(self, reference: np.ndarray) -> RBFKernel:
        ref = np.asarray(reference, dtype=np.float64)
        base = self.base_scale(ref, _self_sq_dists(ref), n_self=len(ref))
        return replace(self, bandwidth=float(base))

    @property
    def fixed_scale(self) -> float | None:
        return self.bandwidth

    def __call__(self, d2: Array, base: Array) -> Array:
        xp = array_namespace(d2)
        widest = max(self.scales)
        powers = _squaring_powers(self.scales)
        if powers is not None:
            # exp(-d2 / (2 s^2)) = exp(-d2 / (2 s_max^2)) ** ((s_max / s)^2); when those powers
            # are 1, 4, 16, ... (the default scales 0.5, 1, 2), one exp and repeated squaring
            # replace an exp per scale: exp dominated the drift monitor's window cost.
            term = xp.exp(d2 * (-0.5 / ((base * widest) * (base * widest))))
            out, power = None, 1
            for wanted in powers:
                while power < wanted:
                    term, power = term * term, power * 2
                out = term if out is None else out + term
            return out
        out = None
        for f in self.scales:
            s = base * f
            term = xp.exp(d2 * (-0.5 / (s * s)))
            out = term if out is None else out + term
        return out


@dataclass(frozen=True)
class IMQKernel(Kernel):
    """Sum of inverse multiquadric kernels c / (c + d2) for c in C_base * scales.

    C_base = 2 * d * sigma2; ``sigma2=None`` uses the mean per-dimension variance of the pooled
    sample (population variance), a number fixes it (e.g. 1.0 for a unit-Gaussian prior).
    """

    name: ClassVar[str] = "imq"
    scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    sigma2: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", _check_scales(self.scales))
        if self.sigma2 is not None and not (self.sigma2 > 0 and np.isfinite(self.sigma2)):
            raise ValueError(f"sigma2 must be a positive number, got {self.sigma2}")

    def base_scale(self, z: Array, d2: Array, n_self: int = 0) -> Array:
        xp = array_namespace(z)
        z = _stop_gradient(z)
        dim = z.shape[1]
        if self.sigma2 is not None:
            return _scalar(xp, 2.0 * dim * self.sigma2, z)
        c = 2.0 * dim * xp.mean(xp.var(z, axis=0))
        return xp.maximum(c, _scalar(xp, _SCALE_FLOOR, c))

    def fixed_to(self, reference: np.ndarray) -> IMQKernel:
        ref = np.asarray(reference, dtype=np.float64)
        return replace(self, sigma2=max(float(ref.var(axis=0).mean()), _SCALE_FLOOR))

    @property
    def fixed_scale(self) -> float | None:
        return self.sigma2

    def __call__(self, d2: Array, base: Array) -> Array:
        if isinstance(d2, np.ndarray) and d2.dtype == np.float64:
            return self._numpy_float64(d2, np.float64(base))
        out = None
        for f in self.scales:
            c = base * f
            term = c / (c + d2)
            out = term if out is None else out + term
        return out

    def _numpy_float64(self, d2: np.ndarray, base: np.float64) -> np.ndarray:
        """The same sums in the same order, into two buffers: the general form allocates three
        arrays per scale, and for the drift monitor's (128, 512) blocks (0.5 MB, each a fresh
        mapping with its page faults) that took 1.1 ms against 0.64 (issue 14)."""
        out = np.empty_like(d2)
        term = np.empty_like(d2)
        for i, f in enumerate(self.scales):
            c = base * f
            np.add(d2, c, out=term)
            np.divide(c, term, out=out if i == 0 else term)
            if i:
                out += term
        return out


KERNELS: dict[str, type[Kernel]] = {"rbf": RBFKernel, "imq": IMQKernel}


def get_kernel(name_or_kernel: str | Kernel) -> Kernel:
    """A kernel instance from a registry name (``"rbf"``, ``"imq"``) or a :class:`Kernel`."""
    if isinstance(name_or_kernel, Kernel):
        return name_or_kernel
    if isinstance(name_or_kernel, str):
        cls = KERNELS.get(name_or_kernel.lower())
        if cls is None:
            raise ValueError(
                f"unknown kernel {name_or_kernel!r}; known kernels: {', '.join(sorted(KERNELS))}"
            )
        return cls()
    raise TypeError(f"kernel must be a name or a Kernel, got {type(name_or_kernel).__name__}")


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _validate(x: Array, y: Array, min_rows: int) -> tuple[Any, Array, Array]:
    """Check shapes and values; return the namespace and x, y in a common floating dtype."""
    xp = array_namespace(x, y)
    for label, a in (("x", x), ("y", y)):
        if a.ndim != 2:
            raise ValueError(
                f"{label} must be 2-D (n_samples, n_features), got shape {tuple(a.shape)}"
            )
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"{label} is empty (shape {tuple(a.shape)})")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same number of features, got {x.shape[1]} and {y.shape[1]}"
        )
    if x.shape[0] < min_rows or y.shape[0] < min_rows:
        raise ValueError(
            f"this estimator needs at least {min_rows} rows in each sample, "
            f"got {x.shape[0]} (x) and {y.shape[0]} (y)"
        )
    dtype = xp.result_type(x.dtype, y.dtype)
    if not xp.isdtype(dtype, "real floating"):
        dtype = xp.float64
    if x.dtype != dtype:
        x = xp.astype(x, dtype)
    if y.dtype != dtype:
        y = xp.astype(y, dtype)
    # One reduction and one host sync for both inputs; find the culprit only on failure.
    if not bool(xp.all(xp.isfinite(x)) & xp.all(xp.isfinite(y))):
        bad = "x" if not bool(xp.all(xp.isfinite(x))) else "y"
        raise ValueError(f"{bad} contains NaN or Inf")
    return xp, x, y


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


def _u_stat(sxx: Any, syy: Any, sxy: Any, tx: Any, ty: Any, n: int, m: int) -> Any:
    """Unbiased MMD^2 from block sums (s..) and diagonal sums (t.); works on arrays too."""
    return (sxx - tx) / (n * (n - 1)) + (syy - ty) / (m * (m - 1)) - 2.0 * sxy / (n * m)


def _v_stat(sxx: Any, syy: Any, sxy: Any, tx: Any, ty: Any, n: int, m: int) -> Any:
    """Biased MMD^2 (V-statistic): diagonals kept, each block divided once by its size."""
    return sxx / (n * n) + syy / (m * m) - 2.0 * sxy / (n * m)


# name -> (statistic from block sums, minimum rows per sample)
_QUADRATIC: dict[str, tuple[Callable[..., Any], int]] = {
    "unbiased": (_u_stat, 2),
    "biased": (_v_stat, 1),
}


def _pooled(x: Array, y: Array, k: Kernel) -> Array:
    xp = array_namespace(x, y)
    z = xp.concat([x, y], axis=0)
    d2 = _self_sq_dists(z)
    base = k.base_scale(z, d2, n_self=z.shape[0])
    return k(d2, base)


def _from_kernel_matrix(K: Array, n: int, stat: Callable[..., Any]) -> Array:
    xp = array_namespace(K)
    size = K.shape[0]
    m = size - n
    diag = xp.reshape(K, (-1,))[:: size + 1]
    sxx = xp.sum(K[:n, :n])
    syy = xp.sum(K[n:, n:])
    sxy = xp.sum(K[:n, n:])
    return stat(sxx, syy, sxy, xp.sum(diag[:n]), xp.sum(diag[n:]), n, m)


def _quadratic_mmd2(x: Array, y: Array, k: Kernel, stat: Callable[..., Any]) -> Array:
    return _from_kernel_matrix(_pooled(x, y, k), x.shape[0], stat)


def _linear_mmd2(x: Array, y: Array, k: Kernel) -> Array:
    """Gretton et al. (2012) linear-time estimator; bandwidth from the same O(n) pairs."""
    xp = array_namespace(x, y)
    n2 = (min(x.shape[0], y.shape[0]) // 2) * 2
    h = n2 // 2
    xe, xo = x[0:n2:2, :], x[1:n2:2, :]
    ye, yo = y[0:n2:2, :], y[1:n2:2, :]
    d2 = xp.concat(
        [
            _rowwise_sq_dists(xe, xo),  # k(x_2i, x_2i+1)
            _rowwise_sq_dists(ye, yo),  # k(y_2i, y_2i+1)
            _rowwise_sq_dists(xe, yo),  # k(x_2i, y_2i+1)
            _rowwise_sq_dists(xo, ye),  # k(x_2i+1, y_2i)
        ]
    )
    z = xp.concat([x[:n2, :], y[:n2, :]], axis=0)
    base = k.base_scale(z, d2, n_self=0)
    kv = k(d2, base)
    hs = kv[:h] + kv[h : 2 * h] - kv[2 * h : 3 * h] - kv[3 * h :]
    return xp.mean(hs)


@dataclass(frozen=True)
class _Estimator:
    compute: Callable[[Array, Array, Kernel], Array]
    min_rows: int


ESTIMATORS: dict[str, _Estimator] = {
    "unbiased": _Estimator(lambda x, y, k: _quadratic_mmd2(x, y, k, _u_stat), 2),
    "biased": _Estimator(lambda x, y, k: _quadratic_mmd2(x, y, k, _v_stat), 1),
    "linear": _Estimator(_linear_mmd2, 2),
}


def _lookup(registry: dict[str, Any], name: str, what: str) -> Any:
    entry = registry.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(registry)}")
    return entry


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def pooled_kernel_matrix(x: Array, y: Array, kernel: str | Kernel = "rbf") -> Array:
    """Kernel matrix over the pooled sample z = concat(x, y): (n + m, n + m).

    The base scale comes from the pooled sample (no gradient), so the matrix is valid for
    every relabelling of z into two groups of sizes n and m.
    """
    k = get_kernel(kernel)
    _, x, y = _validate(x, y, min_rows=1)
    return _pooled(x, y, k)


def mmd2_from_kernel_matrix(K: Array, n: int, estimator: str = "unbiased") -> Array:
    """MMD^2 from a pooled kernel matrix whose first ``n`` rows/columns belong to x.

    ``estimator`` is ``"unbiased"`` or ``"biased"`` (the linear estimator uses its own pairs:
    see :func:`mmd2_linear`).
    """
    if estimator == "linear":
        raise ValueError("the linear estimator is not defined on a pooled matrix; use mmd2_linear")
    stat, min_rows = _lookup(_QUADRATIC, estimator, "estimator")
    xp = array_namespace(K)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square 2-D matrix, got shape {tuple(K.shape)}")
    n = int(n)
    m = K.shape[0] - n
    if n < min_rows or m < min_rows:
        raise ValueError(
            f"the {estimator} estimator needs at least {min_rows} rows per sample, got n={n}, m={m}"
        )
    return _finish(xp, _from_kernel_matrix(K, n, stat))


def mmd2(
    x: Array, y: Array, kernel: str | Kernel = "rbf", estimator: str = "unbiased"
) -> Array | float:
    """Squared MMD between samples ``x`` (n, d) and ``y`` (m, d).

    ``estimator``: ``"unbiased"`` (U-statistic), ``"biased"`` (V-statistic) or ``"linear"``
    (O(n) Gretton estimator). Returns a Python float for numpy input and a 0-d tensor (carrying
    gradient) for torch input; the kernel's base scale never carries gradient.
    """
    est: _Estimator = _lookup(ESTIMATORS, estimator, "estimator")
    k = get_kernel(kernel)
    xp, x, y = _validate(x, y, min_rows=est.min_rows)
    return _finish(xp, est.compute(x, y, k))


def mmd2_linear(x: Array, y: Array, kernel: str | Kernel = "rbf") -> Array | float:
    """Linear-time MMD^2 (Gretton et al. 2012): pairs (2i, 2i+1) of the first min(n, m) rows."""
    return mmd2(x, y, kernel, estimator="linear")


# --------------------------------------------------------------------------------------------
# Permutation test
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PermutationTestResult:
    """Outcome of :func:`permutation_test`; ``null`` holds the B permuted statistics."""

    statistic: float
    p_value: float
    n_permutations: int
    null: np.ndarray


def _to_numpy(a: Any) -> np.ndarray:
    if callable(getattr(a, "detach", None)):  # a torch tensor; torch itself is never imported
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _indicator_stats(
    K: np.ndarray, X: np.ndarray, n: int, m: int, stat: Callable[..., Any], cache: dict
) -> np.ndarray:
    """Statistic for each row of the 0/1 membership matrix X (b, N) from one kernel matrix."""
    sxx = np.einsum("bi,bi->b", X @ K, X)
    sx_all = X @ cache["rowsum"]  # sum over i in x, j anywhere of K_ij
    sxy = sx_all - sxx
    syy = cache["total"] - sxx - 2.0 * sxy
    tx = X @ cache["diag"]
    ty = cache["trace"] - tx
    return stat(sxx, syy, sxy, tx, ty, n, m)


def permutation_test(
    x: Any,
    y: Any,
    kernel: str | Kernel = "rbf",
    estimator: str = "unbiased",
    n_permutations: int = 500,
    seed: int | None = 0,
) -> PermutationTestResult:
    """Two-sample permutation test of H0: x and y come from the same distribution.

    Quadratic estimators permute the labels of one precomputed pooled kernel matrix (valid
    because the base scale comes from the pooled sample), vectorized over permutations. The
    p-value counts the observed statistic: p = (1 + #{null >= observed}) / (1 + B).
    Inputs may be numpy arrays or torch tensors (converted to float64 numpy).
    """
    est: _Estimator = _lookup(ESTIMATORS, estimator, "estimator")
    k = get_kernel(kernel)
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations}")
    n_permutations = int(n_permutations)
    _, x, y = _validate(_to_numpy(x), _to_numpy(y), min_rows=est.min_rows)
    n, m = x.shape[0], y.shape[0]
    size = n + m
    rng = np.random.default_rng(seed)

    if estimator == "linear":
        # O(n) per statistic: recompute on each permuted pooled sample.
        z = np.concatenate([x, y], axis=0)
        observed = float(_linear_mmd2(x, y, k))
        null = np.empty(n_permutations)
        for b in range(n_permutations):
            zp = z[rng.permutation(size)]
            null[b] = float(_linear_mmd2(zp[:n], zp[n:], k))
    else:
        stat, _ = _QUADRATIC[estimator]
        K = _pooled(x, y, k)
        diag = np.ascontiguousarray(np.diagonal(K))
        rowsum = K.sum(axis=1)
        cache = {"diag": diag, "trace": diag.sum(), "rowsum": rowsum, "total": rowsum.sum()}
        labels = np.zeros(size)
        labels[:n] = 1.0
        # Same code path for the observed statistic, so identical splits tie exactly.
        observed = float(_indicator_stats(K, labels[None, :], n, m, stat, cache)[0])
        null = np.empty(n_permutations)
        chunk = max(1, _PERM_CHUNK_BYTES // (8 * size * 3))
        for start in range(0, n_permutations, chunk):
            b = min(chunk, n_permutations - start)
            X = rng.permuted(np.tile(labels, (b, 1)), axis=1)
            null[start : start + b] = _indicator_stats(K, X, n, m, stat, cache)

    p_value = (1.0 + np.count_nonzero(null >= observed)) / (1.0 + n_permutations)
    null.flags.writeable = False
    return PermutationTestResult(
        statistic=observed, p_value=float(p_value), n_permutations=n_permutations, null=null
    )


__all__ = [
    "ESTIMATORS",
    "KERNELS",
    "IMQKernel",
    "Kernel",
    "PermutationTestResult",
    "RBFKernel",
    "get_kernel",
    "mmd2",
    "mmd2_from_kernel_matrix",
    "mmd2_linear",
    "pairwise_sq_dists",
    "permutation_test",
    "pooled_kernel_matrix",
]
