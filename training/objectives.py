"""Training objectives: one small class per method, each with a single regularizer hook.

The trainer computes ``loss = recon + regularizer`` and knows nothing about any method: it
builds the encoder the objective asks for (``stochastic``), draws prior samples when the
objective ``needs_prior``, and logs the named parts the hook returns.

Loss convention
---------------
The trainer's reconstruction term is the MEAN squared error per input element. Dividing a
Gaussian-decoder ELBO by the number of input elements ``n_features`` gives exactly that term
for a decoder variance of 1/2, so the KL-based regularizers (``vae``, ``beta-vae``,
``beta-tcvae``) are divided by ``n_features`` too: their balance against reconstruction is the
ELBO's. The ``mmd`` regularizer is ``lambda * MMD^2(z_global, prior_samples)`` unscaled, as in
the paper (lambda 0.3, biased estimator in training).

The ``mmd`` objective can make independence explicit (off by default, so the paper's objective
is the default): ``lambda * (MMD^2(z, p) + independence * MMD^2(z, z~) + marginal * mean_j
MMD^2(z_j, p_j))`` where ``z~`` permutes every latent column independently across the global
batch (a sample of the product of z's own marginals: the term sees dependence only) and the
last term compares each latent dimension with the prior's marginal in 1-D, where a two-sample
test has far more power than in d dimensions. ``prior_multiple`` draws that many prior rows
per batch row (prior samples cost nothing but kernel entries).

The logged parts are unscaled: ``kl`` and the beta-TCVAE terms in nats per sample, ``mmd2``
(and ``mmd2_independence``, ``mmd2_marginal`` when on) the raw estimates.

Regularizers run in float32 with autocast off (see :func:`_full_precision`): the median
bandwidth, ``exp`` of log variances and the log-density matrices of beta-TCVAE are not safe in
bf16.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from sculptserve.stats.mmd import ESTIMATORS, KERNELS, mmd2
from sculptserve.stats.priors import Prior

__all__ = [
    "AE",
    "MMD",
    "OBJECTIVES",
    "VAE",
    "BetaTCVAE",
    "BetaVAE",
    "Objective",
    "RegularizerInput",
    "build_objective",
    "gaussian_kl",
    "marginal_mmd2",
    "permute_columns",
]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class RegularizerInput:
    """Everything a regularizer may look at for one training step.

    ``z_global`` holds the latents of the GLOBAL batch (gathered across DDP ranks with
    autograd; equal to ``z`` when not distributed). ``prior_samples`` (``prior_rows`` of the
    global batch size rows; same device and dtype as ``z_global``) is drawn by the trainer when
    the objective ``needs_prior``. ``seed`` and ``step`` seed any randomness of a regularizer,
    so every DDP rank draws the same and a resumed run repeats a straight one.
    """

    z: Tensor
    mean: Tensor
    logvar: Tensor | None
    z_global: Tensor
    prior_samples: Tensor | None
    n_features: int
    dataset_size: int
    seed: int = 0
    step: int = 0


def _promote(inp: RegularizerInput) -> RegularizerInput:
    """Cast half-precision tensors (bf16/fp16 from autocast) to float32."""
    changes = {
        f.name: value.float()
        for f in dataclasses.fields(inp)
        if isinstance(value := getattr(inp, f.name), Tensor)
        and value.is_floating_point()
        and value.element_size() < 4
    }
    return dataclasses.replace(inp, **changes) if changes else inp


Hook = Callable[[Any, RegularizerInput], tuple[Tensor, dict[str, Tensor]]]


def _full_precision(hook: Hook) -> Hook:
    """Run a regularizer hook in float32 with autocast disabled (matmuls would drop to bf16)."""

    @functools.wraps(hook)
    def wrapper(self: Any, inp: RegularizerInput) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.autocast(inp.z.device.type, enabled=False):
            return hook(self, _promote(inp))

    return wrapper


# --------------------------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------------------------


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _choice(name: str, value: Any, known: dict[str, Any]) -> str:
    if value not in known:
        raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
    return value


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """A training objective: ``loss = recon + regularizer(inp)[0]``.

    Subclasses are frozen dataclasses whose fields are the JSON-able parameters; they set the
    class variables and override :meth:`regularizer`. ``aliases`` maps a public (JSON / CLI)
    parameter name to the field name where the two differ (``lambda`` is a Python keyword).
    """

    name: ClassVar[str]
    stochastic: ClassVar[bool] = False  # needs a gaussian (mean, logvar) encoder
    needs_prior: ClassVar[bool] = False  # the trainer must fill RegularizerInput.prior_samples
    aliases: ClassVar[dict[str, str]] = {}

    def regularizer(self, inp: RegularizerInput) -> tuple[Tensor, dict[str, Tensor]]:
        """The scalar added to the loss, and named parts for logging."""
        raise NotImplementedError

    def supports_prior(self, prior: Prior) -> bool:
        """Whether this objective can target ``prior`` (the trainer refuses otherwise)."""
        return True

    def prior_rows(self, global_batch: int) -> int:
        """How many prior samples the trainer draws per step for a global batch this size."""
        return global_batch

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters with ``name``; ``build_objective(**to_dict())`` rebuilds it."""
        public = {field: key for key, field in self.aliases.items()}
        params = {public.get(k, k): v for k, v in dataclasses.asdict(self).items()}
        return {"name": self.name, **params}

    @classmethod
    def param_names(cls) -> list[str]:
        """Public parameter names (as accepted by :func:`build_objective`)."""
        public = {field: key for key, field in cls.aliases.items()}
        return [public.get(f.name, f.name) for f in dataclasses.fields(cls)]


# --------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------


def permute_columns(z: Tensor, seed: int, step: int) -> Tensor:
    """``z`` with every column shuffled by its own permutation, seeded by (seed, step).

    The rows of the result are a sample of the product of z's marginals: each column keeps
    its values, every link between columns is cut. Gradients flow back to ``z``.
    """
    n, d = z.shape
    rng = np.random.default_rng([seed, step, 3])
    order = rng.permuted(np.tile(np.arange(n), (d, 1)), axis=1).T  # (n, d), column j a perm
    return torch.gather(z, 0, torch.as_tensor(order, device=z.device))


def marginal_mmd2(x: Tensor, y: Tensor, kernel: str, estimator: str) -> Tensor:
    """Mean over dimensions j of the 1-D MMD^2(x[:, j], y[:, j]) (each with its own scale)."""
    terms = [
        mmd2(x[:, j : j + 1], y[:, j : j + 1], kernel=kernel, estimator=estimator)
        for j in range(x.shape[1])
    ]
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class MMD(Objective):
    """AE-MMD: ``lambda * MMD^2(z_global, prior_samples)`` on the global batch, unscaled, plus
    the optional explicit independence and 1-D marginal terms (weights relative to lambda)."""

    name: ClassVar[str] = "mmd"
    needs_prior: ClassVar[bool] = True
    aliases: ClassVar[dict[str, str]] = {"lambda": "lambda_"}

    lambda_: float = 0.3
    kernel: str = "rbf"
    estimator: str = "biased"  # the paper trains with the biased (V-statistic) estimator
    independence: float = 0.0  # weight of MMD^2(z, column-permuted z)
    marginal: float = 0.0  # weight of the mean 1-D MMD^2 to the prior's marginals
    prior_multiple: int = 1  # prior rows drawn per global-batch row

    def __post_init__(self) -> None:
        for field in ("lambda_", "independence", "marginal"):
            public = "lambda" if field == "lambda_" else field
            object.__setattr__(self, field, _non_negative(public, getattr(self, field)))
        object.__setattr__(
            self, "prior_multiple", _positive_int("prior_multiple", self.prior_multiple)
        )
        _choice("kernel", self.kernel, KERNELS)
        _choice("estimator", self.estimator, ESTIMATORS)

    def prior_rows(self, global_batch: int) -> int:
        return global_batch * self.prior_multiple

    @_full_precision
    def regularizer(self, inp: RegularizerInput) -> tuple[Tensor, dict[str, Tensor]]:
        if inp.prior_samples is None:
            raise ValueError(
                "the mmd objective needs prior samples: the trainer must draw "
                "RegularizerInput.prior_samples when objective.needs_prior is True"
            )
        z = inp.z_global
        try:
            value = mmd2(z, inp.prior_samples, kernel=self.kernel, estimator=self.estimator)
        except ValueError:
            if bool(torch.isfinite(z).all()):
                raise  # a real input error (shapes, bad prior samples)
            # A diverged encoder: answer NaN like the KL regularizers do, so the trainer's
            # non-finite-loss check handles every objective the same way.
            value = z.sum() * math.nan
            return self.lambda_ * value, {"mmd2": value}
        total, parts = value, {"mmd2": value}
        if self.independence > 0:
            shuffled = permute_columns(z, inp.seed, inp.step)
            indep = mmd2(z, shuffled, kernel=self.kernel, estimator=self.estimator)
            total, parts["mmd2_independence"] = total + self.independence * indep, indep
        if self.marginal > 0:
            marg = marginal_mmd2(z, inp.prior_samples, self.kernel, self.estimator)
            total, parts["mmd2_marginal"] = total + self.marginal * marg, marg
        return self.lambda_ * total, parts


@dataclass(frozen=True)
class AE(Objective):
    """Plain autoencoder: no regularizer."""

    name: ClassVar[str] = "ae"

    def regularizer(self, inp: RegularizerInput) -> tuple[Tensor, dict[str, Tensor]]:
        return inp.z.new_zeros(()), {}


def _gaussian_parts(inp: RegularizerInput, objective: str) -> tuple[Tensor, Tensor]:
    if inp.logvar is None:
        raise ValueError(
            f"the {objective} objective needs a stochastic (gaussian) encoder: build the model "
            "with stochastic=True"
        )
    if inp.n_features < 1:
        raise ValueError(f"n_features must be a positive integer, got {inp.n_features!r}")
    return inp.mean, inp.logvar


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over dimensions: (B,)."""
    return 0.5 * torch.sum(mean.square() + logvar.exp() - 1.0 - logvar, dim=1)


def _is_standard_normal(prior: Prior) -> bool:
    return (
        prior.kind == "gaussian"
        and bool((prior.mean() == 0.0).all())
        and bool((prior.var() == 1.0).all())
    )


@dataclass(frozen=True)
class _KLFamily(Objective):
    """Base of the VAE family: gaussian encoder, standard-normal prior by definition."""

    stochastic: ClassVar[bool] = True

    def supports_prior(self, prior: Prior) -> bool:
        return _is_standard_normal(prior)


@dataclass(frozen=True)
class VAE(_KLFamily):
    """VAE: ``KL(q(z|x) || N(0, I))`` (sum over dims, mean over the batch) / n_features."""

    name: ClassVar[str] = "vae"

    @_full_precision
    def regularizer(self, inp: RegularizerInput) -> tuple[Tensor, dict[str, Tensor]]:
        kl = gaussian_kl(*_gaussian_parts(inp, self.name)).mean()
        return kl / inp.n_features, {"kl": kl}


@dataclass(frozen=True)
class BetaVAE(_KLFamily):
    """beta-VAE (Higgins et al. 2017): ``beta * KL / n_features``."""

    name: ClassVar[str] = "beta-vae"

    beta: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", _non_negative("beta", self.beta))

    @_full_precision
    def regularizer(self, inp: RegularizerInput) -> tuple[Tensor, dict[str, Tensor]]:
        kl = gaussian_kl(*_gaussian_parts(inp, self.name)).mean()
        return self.beta * kl / inp.n_features, {"kl": kl}


def _log_normal(z: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(z; mean, exp(logvar)) (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean).square() * torch.exp(-logvar))


@dataclass(frozen=True)
class BetaTCVAE(_KLFamily):
    """beta-TCVAE (Chen et al. 2018): ``alpha MI + beta TC + gamma dim-wise KL``, / n_features.

    log q(z) and log prod_j q(z_j) use minibatch-weighted sampling over this rank's batch with
    the dataset size N: ``log q(z_i) ~ logsumexp_k log q(z_i | x_k) - log(N B)``. With
    alpha = beta = gamma = 1 the three terms telescope to the one-sample estimate of the KL.
    """

    name: ClassVar[str] = "beta-tcvae"

    beta: float = 4.0
    alpha: float = 1.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        for field in ("beta", "alpha", "gamma"):
            object.__setattr__(self, field, _non_negative(field, getattr(self, field)))

    @_full_precision
    def regularizer(self, inp: RegularizerInput) -> tuple[Tensor, dict[str, Tensor]]:
        mean, logvar = _gaussian_parts(inp, self.name)
        if inp.dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive integer, got {inp.dataset_size!r}")
        z = inp.z
        batch = z.shape[0]
        log_qz_x = _log_normal(z, mean, logvar).sum(dim=1)  # log q(z_i | x_i)
        log_pz = (-0.5 * (_LOG_2PI + z.square())).sum(dim=1)  # log N(z_i; 0, I)
        # mat[i, k, j] = log q(z_ij | x_k)
        mat = _log_normal(z[:, None, :], mean[None, :, :], logvar[None, :, :])
        log_norm = math.log(inp.dataset_size * batch)
        log_qz = torch.logsumexp(mat.sum(dim=2), dim=1) - log_norm
        log_prod_qzj = (torch.logsumexp(mat, dim=1) - log_norm).sum(dim=1)

        mi = (log_qz_x - log_qz).mean()
        tc = (log_qz - log_prod_qzj).mean()
        dw_kl = (log_prod_qzj - log_pz).mean()
        total = self.alpha * mi + self.beta * tc + self.gamma * dw_kl
        return total / inp.n_features, {"mi": mi, "tc": tc, "dw_kl": dw_kl, "kl": mi + tc + dw_kl}


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (MMD, AE, VAE, BetaVAE, BetaTCVAE)
}


def build_objective(name: str, **params: Any) -> Objective:
    """An objective from its registry name and public parameters (``lambda`` or ``lambda_``).

    Unknown names and unknown or invalid parameters raise ValueError saying which.
    """
    cls = OBJECTIVES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(OBJECTIVES)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in params.items():
        field = cls.aliases.get(key, key)
        if field not in fields:
            unknown.append(key)
        elif field in kwargs:
            raise ValueError(f"parameter {key!r} of objective {name!r} given twice")
        else:
            kwargs[field] = value
    if unknown:
        known = ", ".join(cls.param_names()) or "none"
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for objective {name!r}; "
            f"known parameters: {known}"
        )
    return cls(**kwargs)
