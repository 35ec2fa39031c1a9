"""The numbers of ``sculpt eval``: independence, prior fit, reconstruction and, where ground-truth
factors exist, supervised disentanglement of one set of embeddings.

eval.json (flat snake_case keys, DESIGN.md "Interfaces"; ``null`` where a metric does not apply
or is undefined, with the reason in ``notes``):

=======================  ======================================================================
key                      meaning
=======================  ======================================================================
lps_linear               LPS with exact OLS (held-out R^2 of each dim from the others, mean)
lps_lgbm, lps_mlp        LPS with LightGBM / a small MLP (the paper's variants); lower is better
total_correlation        Gaussian total correlation, nats: 0.5 (sum log diag C - log det C)
covariance_ratio         sum |diag C| / sum |offdiag C| (higher is more independent)
mmd2, mmd2_pvalue        unbiased MMD^2 to samples of the prior, permutation p-value
ks_max                   largest per-dimension KS distance to the prior's marginals
nmse_db                  10 log10(sum (x - x_hat)^2 / sum x^2) over the evaluated rows
mig                      Mutual Information Gap (20 bins)                      [factors only]
dci_disentanglement,     DCI with gradient-boosted trees (LightGBM)            [factors only]
dci_completeness,
dci_informativeness
sap                      Separated Attribute Predictability                    [factors only]
factorvae_score          FactorVAE majority-vote accuracy                      [factors only]
=======================  ======================================================================

Beside them: ``schema``, ``source`` (what was evaluated), ``n`` and ``latent_dim``, ``config``
(the knobs below), ``per_dim`` (per-dimension LPS R^2 and KS distances), ``timings_s`` and
``notes``. The supervised metrics and their conventions are in
:mod:`sculptserve.stats.disentanglement`. Everything here is numpy (plus LightGBM / scikit-learn for
the learned regressors); the callers in :mod:`sculptserve.offline.sources` produce the inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from sculptserve.stats.lps import latent_predictability
from sculptserve.stats.mmd import permutation_test
from sculptserve.stats.priors import Prior
from sculptserve.stats.scores import covariance_ratio, gaussian_total_correlation, ks_to_prior
from sculptserve.stats.validation import as_embeddings

EVAL_SCHEMA = 1
UNSUPERVISED_KEYS = (
    "lps_linear",
    "lps_lgbm",
    "lps_mlp",
    "total_correlation",
    "covariance_ratio",
    "mmd2",
    "mmd2_pvalue",
    "ks_max",
    "nmse_db",
)
SUPERVISED_KEYS = (
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "factorvae_score",
)
EVAL_KEYS = UNSUPERVISED_KEYS + SUPERVISED_KEYS


@dataclass(frozen=True)
class EvalConfig:
    """How much data each metric sees. Defaults follow the reference conventions: LPS on up
    to 10k rows with an 80/20 split; supervised metrics on 10k train / 5k test points."""

    seed: int = 0
    regressors: tuple[str, ...] = ("linear", "lgbm", "mlp")
    lps_samples: int = 10_000
    lps_mlp_samples: int | None = None  # the MLP fits cost most; default: lps_samples
    kernel: str = "rbf"
    mmd_samples: int = 2_000
    n_permutations: int = 500
    n_train: int = 10_000
    n_test: int = 5_000
    n_jobs: int = 1  # LightGBM threads; on a small box, more contend with everything else

    def __post_init__(self) -> None:
        for name in ("lps_samples", "mmd_samples", "n_permutations", "n_train", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "regressors", tuple(self.regressors))

    @property
    def n_rows(self) -> int:
        """Rows a data source should embed: enough for the largest metric."""
        return max(self.lps_samples, self.mmd_samples, self.n_train + self.n_test)


@dataclass(frozen=True)
class EvalInputs:
    """What one evaluation scores: embeddings (n, d), the prior they should follow, and
    optionally ground-truth factor codes (n, K) and the reconstruction error of the same rows."""

    embeddings: np.ndarray
    prior: Prior
    source: dict[str, Any]
    factors: np.ndarray | None = None
    factor_names: tuple[str, ...] | None = None
    nmse_db: float | None = None
    notes: tuple[str, ...] = ()


@dataclass
class Scores:
    """The values collected so far; ``to_dict`` is the eval.json payload."""

    values: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(EVAL_KEYS))
    per_dim: dict[str, list[float]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Metric = Callable[[EvalInputs, EvalConfig, Scores], None]


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _lps(regressor: str) -> Metric:
    def score(inputs: EvalInputs, config: EvalConfig, scores: Scores) -> None:
        samples = config.lps_samples
        if regressor == "mlp" and config.lps_mlp_samples is not None:
            samples = config.lps_mlp_samples
        result = latent_predictability(
            inputs.embeddings, regressor, seed=config.seed, max_samples=samples
        )
        scores.values[f"lps_{regressor}"] = result.lps
        scores.per_dim[f"lps_{regressor}"] = list(result.per_dim)

    return score


def _gaussian_dependence(inputs: EvalInputs, config: EvalConfig, scores: Scores) -> None:
    scores.values["covariance_ratio"] = _finite_or_none(
        covariance_ratio(inputs.embeddings).covariance_ratio
    )
    scores.values["total_correlation"] = gaussian_total_correlation(
        inputs.embeddings
    ).total_correlation


def _mmd_to_prior(inputs: EvalInputs, config: EvalConfig, scores: Scores) -> None:
    rng = np.random.default_rng([config.seed, 7])
    z = inputs.embeddings
    if len(z) > config.mmd_samples:
        z = z[np.sort(rng.choice(len(z), config.mmd_samples, replace=False))]
    prior_sample = inputs.prior.sample(len(z), rng)
    result = permutation_test(
        z,
        prior_sample,
        kernel=config.kernel,
        n_permutations=config.n_permutations,
        seed=config.seed,
    )
    scores.values["mmd2"] = result.statistic
    scores.values["mmd2_pvalue"] = result.p_value


def _ks(inputs: EvalInputs, config: EvalConfig, scores: Scores) -> None:
    result = ks_to_prior(inputs.embeddings, inputs.prior)
    scores.values["ks_max"] = result.ks_max
    scores.per_dim["ks"] = list(result.per_dim)


def split_train_test(n: int, config: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint train/test rows for the supervised metrics: ``n_train`` / ``n_test``
    when there are enough rows, else the same 2:1 proportion of what there is."""
    order = np.random.default_rng([config.seed, 11]).permutation(n)
    if n >= config.n_train + config.n_test:
        return order[: config.n_train], order[config.n_train : config.n_train + config.n_test]
    n_train = round(n * config.n_train / (config.n_train + config.n_test))
    return order[:n_train], order[n_train:]


def _supervised(inputs: EvalInputs, config: EvalConfig, scores: Scores) -> None:
    from sculptserve.stats.disentanglement import supervised_metrics

    train, test = split_train_test(len(inputs.embeddings), config)
    z, f = inputs.embeddings, inputs.factors
    assert f is not None  # only scheduled when factors exist
    values = supervised_metrics(
        z[train], f[train], z[test], f[test], seed=config.seed, n_jobs=config.n_jobs
    )
    scores.values.update({key: values[key] for key in SUPERVISED_KEYS})
    if f.shape[1] == 1:
        # With one factor every latent can only be "about" it: DCI-D and FactorVAE are 1 by
        # construction and say nothing. MIG, SAP, DCI-C and -I still compare latents.
        scores.values.update(dci_disentanglement=None, factorvae_score=None)
        scores.notes.append("dci_disentanglement, factorvae_score: trivially 1 with one factor")


def _metric_plan(
    inputs: EvalInputs, config: EvalConfig
) -> list[tuple[str, tuple[str, ...], Metric]]:
    """(step name, keys it fills, function), in the order they run."""
    plan = [(f"lps_{r}", (f"lps_{r}",), _lps(r)) for r in config.regressors]
    plan += [
        ("gaussian_dependence", ("total_correlation", "covariance_ratio"), _gaussian_dependence),
        ("mmd2", ("mmd2", "mmd2_pvalue"), _mmd_to_prior),
        ("ks", ("ks_max",), _ks),
    ]
    if inputs.factors is not None:
        plan.append(("supervised", SUPERVISED_KEYS, _supervised))
    return plan


def evaluate(
    inputs: EvalInputs,
    config: EvalConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score ``inputs``; returns the eval.json payload.

    A metric that cannot be computed for these embeddings (a collapsed latent makes LPS and
    the Gaussian scores undefined; a missing optional package) leaves its keys null and says
    why in ``notes``; it never stops the others.
    """
    config = config or EvalConfig()
    z = as_embeddings(inputs.embeddings, min_rows=10)
    if inputs.factors is not None and len(inputs.factors) != len(z):
        raise ValueError(
            f"factors have {len(inputs.factors)} rows but the embeddings {len(z)}; they must "
            "describe the same rows in the same order"
        )
    if z.shape[1] != inputs.prior.dim:
        raise ValueError(
            f"embeddings have {z.shape[1]} dimensions but the prior has {inputs.prior.dim}"
        )
    inputs = replace(inputs, embeddings=z)
    scores = Scores(notes=list(inputs.notes))
    scores.values["nmse_db"] = inputs.nmse_db
    if inputs.nmse_db is None:
        scores.notes.append("nmse_db: no decoder or inputs to reconstruct (embeddings only)")
    if inputs.factors is None:
        scores.notes.append("supervised metrics: no ground-truth factors (give --factors)")
    for name, keys, metric in _metric_plan(inputs, config):
        if log is not None:
            log(f"scoring {name}")
        start = time.perf_counter()
        try:
            metric(inputs, config, scores)
        except (ValueError, ImportError) as exc:
            scores.values.update(dict.fromkeys(keys))
            scores.notes.append(f"{name}: {exc}")
        scores.timings_s[name] = round(time.perf_counter() - start, 3)
    for key, value in scores.values.items():  # eval.json is strict JSON: no NaN or inf
        if value is not None and not np.isfinite(value):
            scores.values[key] = None
            scores.notes.append(f"{key}: not finite ({value})")
    return {
        "schema": EVAL_SCHEMA,
        "source": inputs.source,
        "n": len(z),
        "latent_dim": z.shape[1],
        **scores.values,
        "factor_names": list(inputs.factor_names) if inputs.factor_names else None,
        "config": asdict(config),
        "per_dim": scores.per_dim,
        "timings_s": scores.timings_s,
        "notes": scores.notes,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def render_report(result: dict[str, Any]) -> str:
    """A short markdown report of an eval.json payload (eval.md)."""
    source = result["source"]
    lines = [
        f"# Evaluation of {source.get('path', '?')}",
        "",
        f"{source.get('kind', '?')}; {result['n']} rows, latent dim {result['latent_dim']}.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {_fmt(result.get(key))} |" for key in EVAL_KEYS]
    if result.get("per_dim"):
        lines += ["", "Per dimension:", ""]
        lines += [
            f"- {name}: " + ", ".join(f"{v:.3f}" for v in values)
            for name, values in result["per_dim"].items()
        ]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"
