"""Semi-supervised alignment: tie chosen latent dimensions to known factors with few labels.

Design. ``--align posX=0`` asks latent dimension 0 to encode the factor posX. Only a seeded
fraction of the training rows (``--label-fraction``) counts as labelled. For a factor with K
values, value v is mapped to the prior's marginal quantile of dimension 0 at (v + 0.5) / K,
and labelled rows pay ``align_weight * (mean_0 - target)^2`` on the encoder mean. Using the
prior's own quantiles means the targets, spread over uniformly distributed factor values,
already follow that dimension's prior marginal, so the alignment term and the MMD term pull
the same way instead of fighting; unlabelled rows are shaped by MMD alone. The mapping is
monotone, so an ordinal factor (position, scale) becomes an ordered axis; for a categorical
factor (a class label) the order is arbitrary but each class still gets its own band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sculptserve.stats.priors import Prior


class AlignmentError(ValueError):
    """An --align option is malformed or names an unknown factor or dimension."""


@dataclass(frozen=True)
class AlignTarget:
    factor: str
    dim: int


def parse_align(items: list[str]) -> list[AlignTarget]:
    """Parse ``FACTOR=DIM`` strings."""
    targets = []
    for item in items:
        factor, sep, dim = item.partition("=")
        if not sep or not factor.strip() or not dim.strip().isdigit():
            raise AlignmentError(f"--align takes FACTOR=DIM (e.g. posX=0), got '{item}'")
        targets.append(AlignTarget(factor.strip(), int(dim)))
    dims = [t.dim for t in targets]
    if len(set(dims)) != len(dims):
        raise AlignmentError(f"each latent dimension can be aligned once, got {items}")
    return targets


class Alignment:
    """The alignment loss for one training set; see the module docstring."""

    def __init__(
        self,
        targets: list[AlignTarget],
        *,
        factor_names: list[str],
        factor_sizes: list[int],
        n_rows: int,
        prior: Prior,
        label_fraction: float,
        weight: float,
        seed: int,
    ) -> None:
        for t in targets:
            if t.factor not in factor_names:
                known = ", ".join(factor_names) or "none (this data has no factors or labels)"
                raise AlignmentError(f"unknown factor '{t.factor}' in --align; known: {known}")
            if t.dim >= prior.dim:
                raise AlignmentError(
                    f"--align {t.factor}={t.dim}: the latent has only {prior.dim} dimensions"
                )
        self.targets = targets
        self.weight = weight
        self.columns = [factor_names.index(t.factor) for t in targets]
        self.labelled = np.random.default_rng([seed, 7919]).random(n_rows) < label_fraction
        self.tables = [
            quantile_targets(prior, t.dim, factor_sizes[c])
            for t, c in zip(targets, self.columns, strict=True)
        ]

    def loss(self, mean: torch.Tensor, rows: np.ndarray, factors: np.ndarray) -> torch.Tensor:
        """Alignment loss for a batch: ``rows`` are its dataset positions, ``factors`` theirs."""
        keep = self.labelled[rows]
        if not keep.any():
            return mean.new_zeros(())
        total = mean.new_zeros(())
        for target, column, table in zip(self.targets, self.columns, self.tables, strict=True):
            wanted = torch.as_tensor(table[factors[keep, column]], dtype=mean.dtype)
            total = (
                total + ((mean[torch.as_tensor(keep), target.dim] - wanted.to(mean)) ** 2).mean()
            )
        return self.weight * total


def quantile_targets(prior: Prior, dim: int, n_values: int) -> np.ndarray:
    """Target latent value for each of ``n_values`` factor values: prior quantiles."""
    u = (np.arange(n_values) + 0.5) / n_values
    grid = np.full((n_values, prior.dim), 0.5)
    grid[:, dim] = u
    return prior.ppf(grid)[:, dim]


def factor_correlation(latents: np.ndarray, factors: np.ndarray) -> float:
    """Spearman rank correlation between one latent dimension and one factor."""
    from scipy.stats import spearmanr

    if np.ptp(factors) == 0 or np.ptp(latents) == 0:
        return 0.0
    return float(spearmanr(latents, factors).statistic)
