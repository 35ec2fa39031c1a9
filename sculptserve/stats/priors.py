"""Programmable priors: the distributions the MMD penalty sculpts the latent space into.

A prior is a small, frozen pydantic model that round-trips through plain JSON
(``{"kind": "gaussian", "dim": 8, "std": 2.0}``). Every kind can

- ``sample(n, rng)``: draw ``(n, dim)`` float64 samples (training batches, ``/generate``),
- ``cdf(x)`` / ``ppf(u)``: per-dimension marginal CDF and quantile function (quantizing
  embeddings, KS tests against the marginals),
- ``mean()`` / ``var()``: per-dimension marginal moments.

Kinds live in the ``PRIOR_KINDS`` registry (name -> class); parsing, errors and the short CLI
form (``8:gaussian+2:uniform(-1,1)``) are all driven by it. numpy/scipy only: never torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from scipy.special import ndtr, ndtri

__all__ = [
    "PRIOR_KINDS",
    "SHORT_FORM_ALIASES",
    "CorrelatedPrior",
    "EmpiricalPrior",
    "GaussianPrior",
    "HybridPrior",
    "LaplacePrior",
    "MixturePrior",
    "Prior",
    "PriorSpecError",
    "UniformPrior",
    "load_prior_file",
    "parse_prior",
    "prior_from_dict",
]

# Registry: kind name -> class. Filled by @_register below; everything dispatches through it.
PRIOR_KINDS: dict[str, type[Prior]] = {}


class PriorSpecError(ValueError):
    """An invalid prior spec. ``problem`` is the bare reason; str() adds the valid kinds."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{problem}; valid kinds: {', '.join(sorted(PRIOR_KINDS))}")


# ---------------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------------


def _finite_float(value: Any) -> float:
    # bool is an int subclass; a True std is a typo, not a number
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"must be a number (got {value!r})")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"must be a finite number (got {out})")
    return out


def _scalar_or_vector(value: Any) -> float | tuple[float, ...]:
    """A float broadcast to every dimension, or one finite float per dimension."""
    if isinstance(value, list | tuple | np.ndarray):
        if len(value) == 0:
            raise ValueError("must be a number or a non-empty list of numbers (got [])")
        try:
            return tuple(_finite_float(v) for v in value)
        except ValueError as exc:
            raise ValueError(f"every entry {exc}") from None
    return _finite_float(value)


def _dump_scalar_or_vector(value: float | tuple[float, ...]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value


# Stored as a tuple (hashable, immutable), dumped as a JSON list.
ScalarOrVector = Annotated[
    float | tuple[float, ...],
    PlainValidator(_scalar_or_vector),
    PlainSerializer(_dump_scalar_or_vector, return_type=Any),
]


def _vec(value: float | tuple[float, ...], dim: int) -> np.ndarray:
    """Broadcast a scalar-or-vector field to a fresh (dim,) float64 array."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (dim,)).copy()


def _require_positive(name: str, value: float | tuple[float, ...]) -> None:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0 (got {_fmt(value)})")


def _fmt(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


# ---------------------------------------------------------------------------------------------
# Pure math on arrays (broadcasting over the last axis = latent dimension)
# ---------------------------------------------------------------------------------------------


def _normal_cdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ndtr((x - mean) / std)


def _normal_ppf(u: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return mean + std * ndtri(u)


def _uniform_cdf(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def _uniform_ppf(u: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return low + u * (high - low)


def _laplace_cdf(x: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - loc) / scale
    # each branch only sees its own sign of z, so exp never overflows
    return np.where(
        z < 0, 0.5 * np.exp(np.minimum(z, 0.0)), 1.0 - 0.5 * np.exp(-np.maximum(z, 0.0))
    )


def _laplace_ppf(u: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    p = u - 0.5
    with np.errstate(divide="ignore"):  # u in {0, 1} -> -/+inf, as it should
        return loc - scale * np.sign(p) * np.log1p(-2.0 * np.abs(p))


def _mixture_cdf(x: np.ndarray, w: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """CDF of sum_k w_k N(m_k, s_k^2) at every entry of x (w normalized)."""
    return np.clip((w * ndtr((x[..., None] - m) / s)).sum(axis=-1), 0.0, 1.0)


def _mixture_cdf_pdf(
    x: np.ndarray, w: np.ndarray, m: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    z = (x[..., None] - m) / s
    cdf = np.clip((w * ndtr(z)).sum(axis=-1), 0.0, 1.0)
    pdf = (w * np.exp(-0.5 * z * z) / (s * math.sqrt(2.0 * math.pi))).sum(axis=-1)
    return cdf, pdf


def _mixture_ppf(
    u: np.ndarray,
    w: np.ndarray,
    m: np.ndarray,
    s: np.ndarray,
    xtol: float = 1e-12,
    max_iter: int = 200,
) -> np.ndarray:
    """Invert the mixture CDF entrywise: safeguarded Newton inside a shrinking bracket.

    The bracket [min_k q_k(u), max_k q_k(u)] of the component quantiles always holds the root,
    since F(x) = sum_k w_k F_k(x) lies between min_k F_k(x) and max_k F_k(x). As in Numerical
    Recipes' rtsafe, a Newton step is taken only if it stays in the bracket and is at most half
    the step before last; otherwise bisect, so steep or flat stretches cannot stall an entry.
    An entry stops at a step or bracket below xtol * (1 + |x|), or at |F(x) - u| at rounding
    level. u = 0 / 1 map to -inf / +inf and NaN stays NaN.
    """
    u = np.asarray(u, dtype=np.float64)
    out = np.full(u.shape, np.nan)
    out[u == 0.0] = -np.inf
    out[u == 1.0] = np.inf
    inside = np.flatnonzero((u > 0.0) & (u < 1.0))
    q = u.ravel()[inside]
    comp_q = m + s * ndtri(q[:, None])
    lo, hi = comp_q.min(axis=1), comp_q.max(axis=1)
    x = comp_q @ w  # a weighted mean of the component quantiles: inside the bracket
    step = step_before = hi - lo
    result = np.empty_like(q)
    todo = np.arange(q.size)  # entries still iterating; converged ones drop out
    # F has absolute rounding error ~eps near 1 and relative ~eps near 0: 4 eps u is the floor
    ftol = 4.0 * np.finfo(np.float64).eps
    for _ in range(max_iter):
        cdf, pdf = _mixture_cdf_pdf(x, w, m, s)
        f = cdf - q
        lo = np.where(f < 0, x, lo)
        hi = np.where(f > 0, x, hi)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # pdf may be 0
            newton_step = f / pdf
        newton = x - newton_step
        use_newton = (
            np.isfinite(newton)
            & (newton >= lo)
            & (newton <= hi)
            & (np.abs(newton_step) <= 0.5 * np.abs(step_before))
        )
        x_new = np.where(use_newton, newton, 0.5 * (lo + hi))
        step_before, step = step, np.abs(x_new - x)
        tol = xtol * (1.0 + np.abs(x))
        at_root = np.abs(f) <= ftol * q
        done = at_root | (step <= tol) | (hi - lo <= tol)
        result[todo[done]] = np.where(at_root[done], x[done], x_new[done])
        keep = ~done
        if not keep.any():
            break
        todo, x, lo, hi, q = todo[keep], x_new[keep], lo[keep], hi[keep], q[keep]
        step, step_before = step[keep], step_before[keep]
    else:  # max_iter reached: the bracket midpoint is the best estimate left
        result[todo] = 0.5 * (lo + hi)
    out.reshape(-1)[inside] = result
    return out


def _as_batch(x: Any, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {arr.shape}")
    return arr


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative integer (got {n!r})")
    return int(n)


# ---------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------


class Prior(BaseModel, ABC):
    """A distribution over R^dim, described by a JSON-serializable spec.

    Subclasses set ``kind`` to a Literal, list the fields whose list length fixes ``dim`` in
    ``dim_fields``, and the short-form positional arguments in ``positional``.
    ``dim`` is a field (always an int >= 1 after validation), not a property.
    Build priors with ``prior_from_dict`` / ``parse_prior`` (errors: ``PriorSpecError``);
    calling a class directly, e.g. ``GaussianPrior(dim=4)``, works too but reports a bad spec
    as pydantic's ``ValidationError`` (also a ``ValueError``).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    kind: str
    dim: int = Field(ge=1)

    dim_fields: ClassVar[tuple[str, ...]] = ()
    positional: ClassVar[tuple[str, ...]] = ()

    # --- validation hooks -----------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _prepare_spec(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping):
            return data
        return cls._prepare(dict(data), info.context or {})

    @model_validator(mode="after")
    def _check_spec(self) -> Prior:
        self._check()
        return self

    @classmethod
    def _prepare(cls, data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """Fill in ``dim`` from list-valued fields, else from ``context["default_dim"]``."""
        if data.get("dim") is not None:
            return data
        for name in cls.dim_fields:
            value = data.get(name)
            if isinstance(value, list | tuple) and len(value) > 0:
                return {**data, "dim": len(value)}
        default = context.get("default_dim")
        if default is None:
            raise ValueError(
                f'needs a dimension: add "dim" to the spec, write it as N:{cls._kind()}, '
                "or pass --latent-dim"
            )
        return {**data, "dim": default}

    def _check(self) -> None:
        """Cross-field checks after field validation; raise ValueError with a clear reason."""
        for name in self.dim_fields:
            value = self._spec_value(name)
            if isinstance(value, tuple) and len(value) != self.dim:
                raise ValueError(f"{name} has {len(value)} values but dim is {self.dim}")

    @classmethod
    def _kind(cls) -> str:
        return cls.model_fields["kind"].default

    @classmethod
    def spec_fields(cls) -> dict[str, str]:
        """Spec (JSON) key -> attribute name; they differ where a key clashes with a method."""
        return {info.alias or name: name for name, info in cls.model_fields.items()}

    def _spec_value(self, key: str) -> Any:
        return getattr(self, self.spec_fields()[key])

    # --- short CLI form -------------------------------------------------------------------

    @classmethod
    def short_spec(cls, name: str, args: str | None) -> dict[str, Any]:
        """Spec dict (without dim) for the short form ``name(args)``; ValueError if malformed."""
        if args is None:
            return {"kind": cls._kind()}
        values = _parse_numbers(name, args, cls.positional)
        return {"kind": cls._kind(), **dict(zip(cls.positional, values, strict=True))}

    # --- distribution interface -----------------------------------------------------------

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Draw ``(n, dim)`` float64 samples; an int ``rng`` is a seed."""

    @abstractmethod
    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Per-dimension marginal CDF of ``x`` with shape (n, dim)."""

    @abstractmethod
    def ppf(self, u: np.ndarray) -> np.ndarray:
        """Per-dimension marginal quantiles of ``u`` in [0, 1] with shape (n, dim)."""

    @abstractmethod
    def mean(self) -> np.ndarray:
        """(dim,) marginal means."""

    @abstractmethod
    def var(self) -> np.ndarray:
        """(dim,) marginal variances."""

    def _u_batch(self, u: Any) -> np.ndarray:
        arr = _as_batch(u, self.dim, "u")
        if np.any((arr < 0) | (arr > 1)):
            raise ValueError("u must lie in [0, 1]")
        return arr

    # --- serialization --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict including ``kind``; ``prior_from_dict(p.to_dict()) == p``."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # Compare and hash fields only: private caches (cholesky factor, sample bank) are arrays
    # that pydantic's default __eq__ would compare too, and they are derived anyway.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prior):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))


def _register(cls: type[Prior]) -> type[Prior]:
    PRIOR_KINDS[cls._kind()] = cls
    return cls


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return np.random.default_rng(rng)


# ---------------------------------------------------------------------------------------------
# Kinds
# ---------------------------------------------------------------------------------------------


@_register
class GaussianPrior(Prior):
    """Independent N(mean_i, std_i^2) per dimension."""

    kind: Literal["gaussian"] = "gaussian"
    mean_: ScalarOrVector = Field(default=0.0, alias="mean")  # `mean` is the method
    std: ScalarOrVector = 1.0

    dim_fields: ClassVar[tuple[str, ...]] = ("mean", "std")
    positional: ClassVar[tuple[str, ...]] = ("mean", "std")

    def _check(self) -> None:
        super()._check()
        _require_positive("std", self.std)

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        return _vec(self.mean_, self.dim), _vec(self.std, self.dim)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        m, s = self._params()
        return m + s * _rng(rng).standard_normal((_check_n(n), self.dim))

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return _normal_cdf(_as_batch(x, self.dim, "x"), *self._params())

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return _normal_ppf(self._u_batch(u), *self._params())

    def mean(self) -> np.ndarray:
        return self._params()[0]

    def var(self) -> np.ndarray:
        return self._params()[1] ** 2


@_register
class UniformPrior(Prior):
    """Independent U(low_i, high_i) per dimension."""

    kind: Literal["uniform"] = "uniform"
    low: ScalarOrVector = -1.0
    high: ScalarOrVector = 1.0

    dim_fields: ClassVar[tuple[str, ...]] = ("low", "high")
    positional: ClassVar[tuple[str, ...]] = ("low", "high")

    def _check(self) -> None:
        super()._check()
        low, high = self._params()
        if np.any(low >= high):
            raise ValueError(
                f"low must be < high in every dimension (got low={_fmt(self.low)}, "
                f"high={_fmt(self.high)})"
            )

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        return _vec(self.low, self.dim), _vec(self.high, self.dim)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        low, high = self._params()
        return low + (high - low) * _rng(rng).random((_check_n(n), self.dim))

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return _uniform_cdf(_as_batch(x, self.dim, "x"), *self._params())

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return _uniform_ppf(self._u_batch(u), *self._params())

    def mean(self) -> np.ndarray:
        low, high = self._params()
        return 0.5 * (low + high)

    def var(self) -> np.ndarray:
        low, high = self._params()
        return (high - low) ** 2 / 12.0


@_register
class LaplacePrior(Prior):
    """Independent Laplace(loc_i, scale_i) per dimension (variance 2 scale^2)."""

    kind: Literal["laplace"] = "laplace"
    loc: ScalarOrVector = 0.0
    scale: ScalarOrVector = 1.0

    dim_fields: ClassVar[tuple[str, ...]] = ("loc", "scale")
    positional: ClassVar[tuple[str, ...]] = ("loc", "scale")

    def _check(self) -> None:
        super()._check()
        _require_positive("scale", self.scale)

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        return _vec(self.loc, self.dim), _vec(self.scale, self.dim)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        loc, scale = self._params()
        return loc + scale * _rng(rng).laplace(0.0, 1.0, (_check_n(n), self.dim))

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return _laplace_cdf(_as_batch(x, self.dim, "x"), *self._params())

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return _laplace_ppf(self._u_batch(u), *self._params())

    def mean(self) -> np.ndarray:
        return self._params()[0]

    def var(self) -> np.ndarray:
        return 2.0 * self._params()[1] ** 2


@_register
class MixturePrior(Prior):
    """The same 1-D gaussian mixture, i.i.d. in every dimension.

    ``weights`` are normalized internally (default: equal). ``ppf`` inverts the CDF numerically
    to about 1e-12 relative accuracy in x.
    """

    kind: Literal["mixture"] = "mixture"
    weights: tuple[float, ...] | None = None
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def _check(self) -> None:
        super()._check()
        k = len(self.means)
        lengths = {"means": k, "stds": len(self.stds)}
        if self.weights is not None:
            lengths["weights"] = len(self.weights)
        if k == 0 or len(set(lengths.values())) != 1:
            raise ValueError(
                "weights, means and stds must be non-empty lists of the same length (got "
                + ", ".join(f"{name}: {n}" for name, n in lengths.items())
                + ")"
            )
        _require_positive("stds", self.stds)
        if self.weights is not None:
            w = np.asarray(self.weights)
            if np.any(w < 0) or w.sum() <= 0:
                raise ValueError(f"weights must be >= 0 with a positive sum (got {list(w)})")

    @classmethod
    def short_spec(cls, name: str, args: str | None) -> dict[str, Any]:
        if args is None:
            raise ValueError(f"{name} takes (mean1, std1, mean2, std2, ...)")
        values = _split_numbers(name, args, "(mean1, std1, mean2, std2, ...)")
        if len(values) < 2 or len(values) % 2:
            raise ValueError(f"{name} takes (mean1, std1, mean2, std2, ...)")
        return {"kind": cls._kind(), "means": values[0::2], "stds": values[1::2]}

    def _params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = len(self.means)
        w = np.ones(k) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        return w / w.sum(), np.asarray(self.means), np.asarray(self.stds)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        w, m, s = self._params()
        gen = _rng(rng)
        shape = (_check_n(n), self.dim)
        comp = gen.choice(len(w), size=shape, p=w)
        return m[comp] + s[comp] * gen.standard_normal(shape)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return _mixture_cdf(_as_batch(x, self.dim, "x"), *self._params())

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return _mixture_ppf(self._u_batch(u), *self._params())

    def _moments(self) -> tuple[float, float]:
        w, m, s = self._params()
        mu = float(w @ m)
        return mu, float(w @ (s**2 + m**2)) - mu**2

    def mean(self) -> np.ndarray:
        return np.full(self.dim, self._moments()[0])

    def var(self) -> np.ndarray:
        return np.full(self.dim, self._moments()[1])


@_register
class CorrelatedPrior(Prior):
    """N(mean, cov) with a full covariance; cdf/ppf are those of the marginals N(mean_i, cov_ii).

    Give either ``cov`` (dim x dim, symmetric positive definite) or ``rho`` (equicorrelation
    (1 - rho) I + rho 11^T with unit variances, valid for -1/(dim-1) < rho < 1).
    """

    kind: Literal["correlated"] = "correlated"
    mean_: ScalarOrVector = Field(default=0.0, alias="mean")  # `mean` is the method
    cov: tuple[tuple[float, ...], ...] | None = None
    rho: float | None = None

    dim_fields: ClassVar[tuple[str, ...]] = ("cov", "mean")
    positional: ClassVar[tuple[str, ...]] = ("rho",)

    _chol: np.ndarray | None = PrivateAttr(default=None)

    @classmethod
    def short_spec(cls, name: str, args: str | None) -> dict[str, Any]:
        if args is None:
            raise ValueError(f"{name} takes (rho)")
        return super().short_spec(name, args)

    def _check(self) -> None:
        if (self.cov is None) == (self.rho is None):
            raise ValueError("give either cov (a dim x dim matrix) or rho (equicorrelation)")
        if self.cov is not None:
            rows = [len(r) for r in self.cov]
            if any(r != self.dim for r in rows) or len(rows) != self.dim:
                raise ValueError(
                    f"cov must be a {self.dim} x {self.dim} matrix (got {len(rows)} rows of "
                    f"lengths {rows})"
                )
        super()._check()
        if self.rho is not None:
            lower = -1.0 / (self.dim - 1) if self.dim > 1 else -1.0
            if not lower < self.rho < 1.0:
                raise ValueError(
                    f"rho must satisfy -1/(dim-1) < rho < 1, i.e. {lower:.6g} < rho < 1 for "
                    f"dim {self.dim} (got {self.rho})"
                )
        cov = self.covariance()
        scale = float(np.abs(cov).max())
        if not np.allclose(cov, cov.T, rtol=0.0, atol=1e-9 * scale):
            i, j = np.unravel_index(np.argmax(np.abs(cov - cov.T)), cov.shape)
            raise ValueError(
                f"cov must be symmetric (cov[{i}][{j}]={cov[i, j]} but cov[{j}][{i}]={cov[j, i]})"
            )
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            smallest = float(np.linalg.eigvalsh(cov).min())
            raise ValueError(
                f"cov must be positive definite (cholesky failed; smallest eigenvalue "
                f"{smallest:.6g})"
            ) from None
        chol.setflags(write=False)
        self._chol = chol

    def covariance(self) -> np.ndarray:
        """The (dim, dim) covariance matrix (built from rho for the equicorrelated form)."""
        if self.cov is not None:
            return np.asarray(self.cov, dtype=np.float64)
        rho = float(self.rho)  # _check guarantees one of cov/rho is set
        return (1.0 - rho) * np.eye(self.dim) + rho * np.ones((self.dim, self.dim))

    def _cholesky(self) -> np.ndarray:
        if self._chol is None:  # only after model_construct(), which skips validation
            self._chol = np.linalg.cholesky(self.covariance())
        return self._chol

    def _marginals(self) -> tuple[np.ndarray, np.ndarray]:
        return _vec(self.mean_, self.dim), np.sqrt(np.diag(self.covariance()))

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        z = _rng(rng).standard_normal((_check_n(n), self.dim))
        return _vec(self.mean_, self.dim) + z @ self._cholesky().T

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return _normal_cdf(_as_batch(x, self.dim, "x"), *self._marginals())

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return _normal_ppf(self._u_batch(u), *self._marginals())

    def mean(self) -> np.ndarray:
        return _vec(self.mean_, self.dim)

    def var(self) -> np.ndarray:
        return np.diag(self.covariance()).copy()


def _open_bank(path: str, mmap: bool) -> np.ndarray:
    """np.load a 2-D bank without pickle; ValueError naming the file on every failure."""
    if not os.path.isfile(path):
        raise ValueError(f"bank file '{path}' does not exist")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(
            f"could not load bank '{path}' as a .npy array without pickle ({exc})"
        ) from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise ValueError(f"bank '{path}' must be a single .npy array, not an .npz archive")
    if arr.ndim != 2:
        raise ValueError(
            f"bank '{path}' must be a 2-D array (samples x dims), got shape {arr.shape}"
        )
    return arr


@_register
class EmpiricalPrior(Prior):
    """A bank of samples from a .npy file (e.g. another model's latents: latent space copying).

    The bank is loaded and validated at construction (fail early) and cached. ``sample`` draws
    rows with replacement, so cross-dimension dependence is kept. ``cdf`` is the per-dimension
    empirical CDF (fraction of the bank <= x); ``ppf`` the inverted-CDF quantile (the smallest
    bank value whose CDF is >= u, numpy's ``method="inverted_cdf"``), so ``ppf(cdf(x)) == x``
    for bank values. ``mean``/``var`` are the bank's (population variance, ddof=0).
    A relative ``path`` in a spec loaded from a file is resolved against that file's folder.
    """

    kind: Literal["empirical"] = "empirical"
    path: str

    positional: ClassVar[tuple[str, ...]] = ("path",)

    _bank: np.ndarray | None = PrivateAttr(default=None)
    _sorted: np.ndarray | None = PrivateAttr(default=None)

    @classmethod
    def _prepare(cls, data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        path = data.get("path")
        if isinstance(path, str | os.PathLike):
            path = os.path.expanduser(os.fspath(path))
            base_dir = context.get("base_dir")
            if base_dir is not None and not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            data["path"] = path
            if data.get("dim") is None:  # read only the header (memory map) for the dim
                data["dim"] = _open_bank(path, mmap=True).shape[1]
        return super()._prepare(data, context)

    @classmethod
    def short_spec(cls, name: str, args: str | None) -> dict[str, Any]:
        if args is None or not args.strip():
            raise ValueError(f"{name} takes (path/to/bank.npy)")
        return {"kind": cls._kind(), "path": args.strip()}

    def _check(self) -> None:
        super()._check()
        arr = _open_bank(self.path, mmap=False)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"bank '{self.path}' must hold real numbers (got dtype {arr.dtype})")
        bank = arr.astype(np.float64)
        if bank.shape[0] < 2:
            raise ValueError(f"bank '{self.path}' needs at least 2 rows (got {bank.shape[0]})")
        if not np.isfinite(bank).all():
            raise ValueError(f"bank '{self.path}' must be all finite (found NaN or inf)")
        if bank.shape[1] != self.dim:
            raise ValueError(
                f"bank '{self.path}' has {bank.shape[1]} columns but dim is {self.dim}"
            )
        bank.setflags(write=False)
        self._bank = bank

    @property
    def bank(self) -> np.ndarray:
        """The (rows, dim) float64 sample bank, read-only."""
        if self._bank is None:  # only after model_construct(), which skips validation
            self._check()
        return self._bank

    def _sorted_bank(self) -> np.ndarray:
        if self._sorted is None:  # sorted lazily: only cdf/ppf need it
            self._sorted = np.sort(self.bank, axis=0)
        return self._sorted

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        rows = _rng(rng).integers(0, self.bank.shape[0], size=_check_n(n))
        return self.bank[rows]

    def cdf(self, x: np.ndarray) -> np.ndarray:
        x = _as_batch(x, self.dim, "x")
        srt = self._sorted_bank()
        counts = np.stack(
            [np.searchsorted(srt[:, j], x[:, j], side="right") for j in range(self.dim)], axis=1
        )
        return counts / srt.shape[0]

    def ppf(self, u: np.ndarray) -> np.ndarray:
        u = self._u_batch(u)
        srt = self._sorted_bank()
        rows = srt.shape[0]
        # levels[i] = (i+1)/rows is computed exactly like cdf(), so ppf(cdf(x)) hits x itself
        levels = np.arange(1, rows + 1) / rows
        idx = np.clip(np.searchsorted(levels, u, side="left"), 0, rows - 1)
        return np.take_along_axis(srt, idx, axis=0) if u.size else np.empty_like(u)

    def mean(self) -> np.ndarray:
        return self.bank.mean(axis=0)

    def var(self) -> np.ndarray:
        return self.bank.var(axis=0)


@_register
class HybridPrior(Prior):
    """A different prior per block of dimensions, concatenated in order (nested hybrids allowed).

    ``dim`` is the sum of the components' dims; it may be omitted from the spec.
    """

    kind: Literal["hybrid"] = "hybrid"
    components: tuple[SerializeAsAny[Prior], ...]

    @classmethod
    def _prepare(cls, data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        comps = data.get("components")
        if not isinstance(comps, list | tuple) or not comps:
            raise ValueError("components must be a non-empty list of prior specs")
        # a block never takes the whole --latent-dim; it must say its own size
        sub_context = {k: v for k, v in context.items() if k != "default_dim"}
        built = []
        for i, comp in enumerate(comps, start=1):
            if isinstance(comp, Prior):
                built.append(comp)
                continue
            try:
                built.append(_build(comp, sub_context))
            except PriorSpecError as exc:
                raise ValueError(f"component {i}: {exc.problem}") from None
        data["components"] = tuple(built)
        if data.get("dim") is None:
            data["dim"] = sum(c.dim for c in built)
        return super()._prepare(data, context)

    @classmethod
    def short_spec(cls, name: str, args: str | None) -> dict[str, Any]:
        raise ValueError(
            f"{name} is written as blocks joined by '+', e.g. 8:gaussian+2:uniform(-1,1)"
        )

    def _check(self) -> None:
        super()._check()
        total = sum(c.dim for c in self.components)
        if total != self.dim:
            raise ValueError(f"dim is {self.dim} but the components add up to {total}")

    def _blocks(self, arr: np.ndarray) -> list[np.ndarray]:
        bounds = np.cumsum([c.dim for c in self.components])[:-1]
        return np.split(arr, bounds, axis=1)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        gen = _rng(rng)  # one generator shared by the blocks, in order
        return np.concatenate([c.sample(n, gen) for c in self.components], axis=1)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        blocks = self._blocks(_as_batch(x, self.dim, "x"))
        return np.concatenate([c.cdf(b) for c, b in zip(self.components, blocks, strict=True)], 1)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        blocks = self._blocks(self._u_batch(u))
        return np.concatenate([c.ppf(b) for c, b in zip(self.components, blocks, strict=True)], 1)

    def mean(self) -> np.ndarray:
        return np.concatenate([c.mean() for c in self.components])

    def var(self) -> np.ndarray:
        return np.concatenate([c.var() for c in self.components])


# ---------------------------------------------------------------------------------------------
# Building from dicts, JSON, YAML and the short CLI form
# ---------------------------------------------------------------------------------------------


def _describe(kind: str, cls: type[Prior], err: ValidationError) -> str:
    """One line naming the kind, the field and the problem for each pydantic error."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            known = ", ".join(n for n in cls.spec_fields() if n != "kind")
            parts.append(f"unknown field '{loc}' (fields: {known})")
            continue
        if e["type"] == "missing":
            parts.append(f"missing required field '{loc}'")
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        else:  # pydantic's own wording: lower-case it and show the offending input
            got = repr(e.get("input"))
            msg = msg[:1].lower() + msg[1:] + f" (got {got[:60]})"
        parts.append(msg if not loc or msg.startswith(loc) else f"{loc}: {msg}")
    return f"{kind}: " + "; ".join(parts)


def _build(spec: Any, context: Mapping[str, Any]) -> Prior:
    if not isinstance(spec, Mapping):
        raise PriorSpecError(f"a prior spec must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind is None:
        raise PriorSpecError(f"prior spec has no 'kind' (got keys {sorted(spec)})")
    cls = PRIOR_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise PriorSpecError(f"unknown prior kind {kind!r}")
    try:
        return cls.model_validate(dict(spec), context=dict(context))
    except ValidationError as exc:
        raise PriorSpecError(_describe(kind, cls, exc)) from None


def _check_requested(dim: int | None) -> None:
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise PriorSpecError(f"the requested dimension must be a positive integer (got {dim!r})")


def _match_dim(prior: Prior, dim: int | None) -> Prior:
    if dim is not None and prior.dim != dim:
        raise PriorSpecError(
            f"prior has {prior.dim} dimensions but {dim} were requested (--latent-dim)"
        )
    return prior


def _from_dict(spec: Any, dim: int | None, base_dir: str | None) -> Prior:
    _check_requested(dim)
    return _match_dim(_build(spec, {"default_dim": dim, "base_dir": base_dir}), dim)


def prior_from_dict(spec: dict[str, Any], dim: int | None = None) -> Prior:
    """Build a prior from its dict form; ``dim`` fills a missing dimension or must match it."""
    return _from_dict(spec, dim, None)


# --- short form --------------------------------------------------------------------------

_SHORT_HELP = "expected blocks like 'gaussian', 'uniform(-5,5)' or '8:gaussian+2:uniform(-1,1)'"
_BLOCK_RE = re.compile(r"^(?:([+-]?\d+)\s*:\s*)?([A-Za-z_][A-Za-z0-9_-]*)\s*(?:\((.*)\))?$", re.S)


def _split_numbers(name: str, args: str, signature: str) -> list[float]:
    values = []
    for token in args.split(","):
        try:
            values.append(float(token.strip()))
        except ValueError:
            raise ValueError(
                f"{name} takes {signature}; {token.strip()!r} is not a number"
            ) from None
    return values


def _parse_numbers(name: str, args: str, positional: tuple[str, ...]) -> list[float]:
    signature = f"({', '.join(positional)})" if positional else "no arguments"
    values = _split_numbers(name, args, signature) if positional else []
    if not positional or len(values) != len(positional):
        raise ValueError(f"{name} takes {signature}")
    return values


def _bimodal(name: str, args: str | None) -> dict[str, Any]:
    """bimodal(offset, std): equal-weight mixture with modes at -offset and +offset."""
    if args is None:
        raise ValueError(f"{name} takes (offset, std)")
    offset, std = _parse_numbers(name, args, ("offset", "std"))
    return {"kind": "mixture", "means": [-offset, offset], "stds": [std, std]}


# Short-form names that are not registry kinds: name -> builder(name, args) of a spec dict.
SHORT_FORM_ALIASES: dict[str, Callable[[str, str | None], dict[str, Any]]] = {
    "normal": GaussianPrior.short_spec,
    "bimodal": _bimodal,
}


def _short_names() -> dict[str, Callable[[str, str | None], dict[str, Any]]]:
    return {**{k: cls.short_spec for k, cls in PRIOR_KINDS.items()}, **SHORT_FORM_ALIASES}


def _split_blocks(text: str) -> list[str]:
    """Split on '+' outside parentheses (so '1e+3' and paths inside args survive)."""
    blocks, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced parentheses (a ')' without '(')")
        elif ch == "+" and depth == 0:
            blocks.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError("unbalanced parentheses (a '(' without ')')")
    blocks.append(text[start:])
    return [b.strip() for b in blocks]


def _parse_block(block: str) -> tuple[int | None, dict[str, Any]]:
    """'[N:]NAME[(ARGS)]' -> (N or None, spec dict without dim)."""
    match = _BLOCK_RE.match(block)
    if match is None or "(" in (match.group(3) or ""):
        raise ValueError(f"{block!r} is not of the form [N:]NAME[(ARGS)]; {_SHORT_HELP}")
    size_text, name, args = match.groups()
    size = None if size_text is None else int(size_text)
    if size is not None and size <= 0:
        raise ValueError(f"block size must be >= 1 (got {size} in {block!r})")
    names = _short_names()
    builder = names.get(name.lower())
    if builder is None:
        raise ValueError(f"unknown prior {name!r} (short forms: {', '.join(sorted(names))})")
    return size, builder(name.lower(), args)


def _parse_short(text: str, dim: int | None, base_dir: str | None) -> Prior:
    _check_requested(dim)
    stripped = text.strip()
    try:
        if not stripped:
            raise ValueError(f"the prior is empty; {_SHORT_HELP}")
        parsed = [(block, *_parse_block(block)) for block in _split_blocks(stripped)]
    except ValueError as exc:
        raise PriorSpecError(f"could not parse prior {text!r}: {exc}") from None
    context = {"base_dir": base_dir}
    if len(parsed) == 1:
        block, size, spec = parsed[0]
        spec = spec if size is None else {**spec, "dim": size}
        return _match_dim(_build_block(block, spec, {**context, "default_dim": dim}), dim)

    unsized = [block for block, size, _ in parsed if size is None]
    if len(unsized) > 1:
        raise PriorSpecError(
            f"could not parse prior {text!r}: with several blocks every block needs a size N: "
            "(at most one may omit it to take the rest of --latent-dim), e.g. "
            "8:gaussian+2:uniform(-1,1)"
        )
    sized_total = sum(size for _, size, _ in parsed if size is not None)
    remainder = None
    if unsized:
        if dim is None:
            raise PriorSpecError(
                f"block {unsized[0]!r} of prior {text!r} has no size N: and no dimension was "
                "given (--latent-dim) to take the rest from"
            )
        remainder = dim - sized_total
        if remainder < 1:
            raise PriorSpecError(
                f"block {unsized[0]!r} of prior {text!r} would get {remainder} dimensions: "
                f"the other blocks already take {sized_total} of {dim}"
            )
    comps = [
        _build_block(block, {**spec, "dim": remainder if size is None else size}, context)
        for block, size, spec in parsed
    ]
    return _match_dim(_build({"kind": "hybrid", "components": comps}, context), dim)


def _build_block(block: str, spec: dict[str, Any], context: Mapping[str, Any]) -> Prior:
    try:
        return _build(spec, context)
    except PriorSpecError as exc:
        raise PriorSpecError(f"invalid prior block {block!r}: {exc.problem}") from None


# --- files and entry point ---------------------------------------------------------------

_FILE_LOADERS: dict[str, Callable[[str], Any]] = {
    ".json": json.loads,
    ".yaml": yaml.safe_load,
    ".yml": yaml.safe_load,
}


def load_prior_file(path: str | os.PathLike[str], dim: int | None = None) -> Prior:
    """Load a prior from a .json/.yaml/.yml file holding a spec object or a short-form string.

    Relative empirical bank paths inside it are resolved against the file's folder.
    """
    file = Path(path).expanduser()
    loader = _FILE_LOADERS.get(file.suffix.lower())
    if loader is None:
        raise PriorSpecError(f"prior file '{file}' must end in {', '.join(_FILE_LOADERS)}")
    if not file.is_file():
        raise PriorSpecError(f"prior file '{file}' does not exist")
    try:
        doc = loader(file.read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        reason = " ".join(str(exc).split())
        raise PriorSpecError(f"could not read prior file '{file}': {reason}") from None
    base_dir = str(file.parent)
    if isinstance(doc, str):
        return _parse_short(doc, dim, base_dir)
    if not isinstance(doc, Mapping):
        raise PriorSpecError(
            f"prior file '{file}' must hold a spec object or a short-form string, "
            f"got {type(doc).__name__}"
        )
    return _from_dict(doc, dim, base_dir)


def parse_prior(text: str, dim: int | None = None) -> Prior:
    """Parse ``--prior``: a short form, an inline JSON object, or a .json/.yaml/.yml file path."""
    text = os.fspath(text)
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            spec = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise PriorSpecError(f"could not parse prior JSON {stripped!r}: {exc}") from None
        return prior_from_dict(spec, dim)
    if Path(stripped).suffix.lower() in _FILE_LOADERS:
        return load_prior_file(stripped, dim)
    return _parse_short(text, dim, None)
