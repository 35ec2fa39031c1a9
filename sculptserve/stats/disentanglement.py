"""Supervised disentanglement metrics for encoder means with known ground-truth factors.

Conventions follow disentanglement_lib (Locatello et al., 2019) unless a docstring says
otherwise. The representation is the encoder mean ``z`` (n, d); factors are non-negative
integer codes ``f`` (n, K) for the same rows. disentanglement_lib's defaults are 10,000 train
and 5,000 test points; here callers pass the arrays, so they choose the sizes.

- **MIG** (Chen et al., 2018): each latent is discretized into 20 equal-width bins over its
  own min..max; MI(latent_j, factor_k) in nats (plug-in estimate, as scikit-learn's
  ``mutual_info_score``); per factor, (top-1 minus top-2 MI) / H(factor_k); mean over
  factors. Factors with a single value (H = 0) are skipped; nan if every factor is.
- **DCI** (Eastwood & Williams, 2018): one LightGBM classifier per factor on the train
  latents gives the importance matrix R (latents x factors, split gain). Disentanglement and
  completeness are importance-weighted ``1 - entropy`` of R's rows (base K) and columns
  (base L); informativeness is the mean test accuracy over factors.
- **SAP** (Kumar et al., 2018): per factor and latent, a multinomial logistic regression on
  that single standardized latent, scored on test by chance-adjusted balanced accuracy
  (deviation: disentanglement_lib uses raw accuracy); mean over factors of the gap between
  the best and second-best latent.
- **FactorVAE score** (Kim & Mnih, 2018): majority-vote classifier from "which latent has
  the least normalized variance when factor k is fixed" to k, on batches drawn from a finite
  pool of encoded points (deviation: disentanglement_lib samples fresh observations).

All metrics return plain Python floats; ``supervised_metrics`` computes all of them.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import numpy as np

from sculptserve.stats.validation import as_embeddings, constant_dims

MIG_BINS = 20
FACTORVAE_PRUNE_STD = 0.05
SAP_C = 1e4
_SAP_MAX_ITER = 100
_VOTE_CHUNK = 1024  # votes gathered per numpy step: bounds memory at chunk * batch * d floats


# ---------------------------------------------------------------------------- validation


def as_factors(f: object, n_rows: int, *, name: str = "factors") -> np.ndarray:
    """Return ``f`` as an int64 (n_rows, K) array of non-negative codes, or raise ValueError.

    Any integer dtype is accepted, and floats whose values are all integers (a CSV round
    trip often turns codes into floats).
    """
    arr = np.asarray(f)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must be an integer array of factor codes, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, n_factors), got shape {arr.shape}"
        )
    if arr.shape[0] != n_rows:
        raise ValueError(
            f"{name} has {arr.shape[0]} rows but the latents have {n_rows}; they must match"
        )
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no factor columns (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf")
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must hold integer codes, found non-integer values")
    if (arr < 0).any():
        raise ValueError(f"{name} must hold non-negative codes, found minimum {arr.min()}")
    return arr.astype(np.int64)


def _checked(z: object, f: object, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (latents, factors) pair; ``name`` prefixes the error messages."""
    z_arr = as_embeddings(z, name=f"{name} latents")
    return z_arr, as_factors(f, z_arr.shape[0], name=f"{name} factors")


def _checked_split(
    z_train: object, f_train: object, z_test: object, f_test: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a train/test split: each pair consistent, and the same d and K across them."""
    z_tr, f_tr = _checked(z_train, f_train, name="train")
    z_te, f_te = _checked(z_test, f_test, name="test")
    if z_tr.shape[1] != z_te.shape[1]:
        raise ValueError(
            f"train latents have {z_tr.shape[1]} dims but test latents have {z_te.shape[1]}"
        )
    if f_tr.shape[1] != f_te.shape[1]:
        raise ValueError(
            f"train factors have {f_tr.shape[1]} columns but test factors have {f_te.shape[1]}"
        )
    return z_tr, f_tr, z_te, f_te


def _require(module: str, metric: str) -> ModuleType:
    # Imported lazily: the serving install has neither package, only offline scoring needs them.
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"the {metric} metric needs the package '{module}': pip install 'sculptserve[eval]'"
        ) from None


# ----------------------------------------------------------------------------- helpers


def _dense_codes(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel a 1-D array of codes to 0..m-1 (for bincount); returns (codes, m)."""
    values, codes = np.unique(x, return_inverse=True)
    return codes.reshape(-1), values.size


def discretize(z: np.ndarray, n_bins: int = MIG_BINS) -> np.ndarray:
    """Histogram codes 0..n_bins-1 per latent, equal-width bins over each latent's min..max.

    Same as disentanglement_lib's ``histogram_discretize``; a constant latent falls in one bin.
    """
    codes = np.empty(z.shape, dtype=np.int64)
    for j in range(z.shape[1]):
        edges = np.histogram(z[:, j], bins=n_bins)[1]
        # Digitizing against the left edges puts the maximum in the last bin, not past it.
        codes[:, j] = np.digitize(z[:, j], edges[:-1]) - 1
    return codes


def entropy_nats(codes: np.ndarray) -> float:
    """Plug-in entropy of a 1-D array of discrete codes, in nats."""
    p = np.bincount(_dense_codes(codes)[0]) / codes.size
    return float(-(p * np.log(p)).sum())


def mutual_information_nats(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information of two discrete 1-D code arrays, in nats.

    Equal to ``sklearn.metrics.mutual_info_score(a, b)``, without needing scikit-learn.
    """
    a_codes, na = _dense_codes(a)
    b_codes, nb = _dense_codes(b)
    joint = np.bincount(a_codes * nb + b_codes, minlength=na * nb).reshape(na, nb) / a.size
    outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(max((joint[nz] * np.log(joint[nz] / outer[nz])).sum(), 0.0))


def normalized_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each row of non-negative weights ``p`` (normalized per row), log base ``base``.

    Rows summing to zero give nan: they are no distribution, callers give them zero weight.
    """
    totals = p.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = p / totals
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    h = -terms.sum(axis=1) / np.log(base)
    return np.where(totals[:, 0] > 0, h, np.nan)


# --------------------------------------------------------------------------------- MIG


def mig(z: object, factors: object, *, n_bins: int = MIG_BINS) -> float:
    """Mutual Information Gap, in [0, 1].

    Per factor k: (largest minus second-largest MI(latent_j, factor_k)) / H(factor_k), with
    latents discretized into ``n_bins`` equal-width bins; mean over factors. Factors with a
    single value (H = 0) are skipped, and nan is returned if every factor is. With a single
    latent the second-largest MI is taken as 0.
    """
    z_arr, f_arr = _checked(z, factors, name="MIG")
    codes = discretize(z_arr, n_bins)
    gaps = []
    for k in range(f_arr.shape[1]):
        h = entropy_nats(f_arr[:, k])
        if h <= 0.0:
            continue
        mi = [mutual_information_nats(codes[:, j], f_arr[:, k]) for j in range(codes.shape[1])]
        top = np.sort(np.asarray(mi))[::-1]
        second = top[1] if top.size > 1 else 0.0
        gaps.append((top[0] - second) / h)
    return float(np.mean(gaps)) if gaps else float("nan")


# --------------------------------------------------------------------------------- DCI


def dci_importance(
    z_train: object,
    f_train: object,
    z_test: object,
    f_test: object,
    *,
    seed: int = 0,
    n_jobs: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance matrix R (latents x factors) and per-factor test accuracy for DCI.

    One LightGBM multiclass classifier per factor (50 trees, 15 leaves, learning rate 0.2,
    gain importances, deterministic for ``seed``). disentanglement_lib uses scikit-learn's
    GradientBoostingClassifier, which fits one exact-split tree per class per round: far too
    slow for 40-valued factors. Accuracy is on test (disentanglement_lib also reports train).
    A factor with a single train value gets an all-zero importance column.
    """
    lightgbm = _require("lightgbm", "DCI")
    z_tr, f_tr, z_te, f_te = _checked_split(z_train, f_train, z_test, f_test)
    importance = np.zeros((z_tr.shape[1], f_tr.shape[1]))
    accuracy = np.zeros(f_tr.shape[1])
    for k in range(f_tr.shape[1]):
        model = lightgbm.LGBMClassifier(
            n_estimators=50,
            num_leaves=15,
            learning_rate=0.2,
            importance_type="gain",
            n_jobs=n_jobs,
            random_state=seed,
            deterministic=True,
            force_row_wise=True,  # with deterministic=True: same numbers for any thread count
            verbose=-1,
        )
        model.fit(z_tr, f_tr[:, k])
        importance[:, k] = model.feature_importances_
        accuracy[k] = np.mean(model.predict(z_te) == f_te[:, k])
    return importance, accuracy


def _weighted_one_minus_entropy(r: np.ndarray) -> float:
    """Sum over rows of (row share of R's total) * (1 - entropy of the row, base = #columns).

    A single column makes every used row trivially specific: its score is 1 (base-1 entropy
    is undefined). All-zero rows carry no weight; an all-zero R (nothing used) scores 0.
    """
    total = r.sum()
    if total <= 0.0:
        return 0.0
    if r.shape[1] == 1:
        return 1.0
    weight = r.sum(axis=1) / total
    used = weight > 0
    return float((weight[used] * (1.0 - normalized_entropy(r[used], r.shape[1]))).sum())


def dci_from_importance(importance: np.ndarray, accuracy: np.ndarray) -> dict[str, float]:
    """DCI disentanglement, completeness and informativeness from R and test accuracies.

    Disentanglement: sum_j rho_j (1 - H_K(R_j.)), rho_j = row share of R; completeness: the
    same over columns with base L. A single factor (K = 1) gives disentanglement 1 and a
    single latent (L = 1) completeness 1; an all-zero R gives 0 for both (disentanglement_lib
    would divide by zero).
    """
    return {
        "dci_disentanglement": _weighted_one_minus_entropy(importance),
        "dci_completeness": _weighted_one_minus_entropy(importance.T),
        "dci_informativeness": float(np.mean(accuracy)),
    }


def dci(
    z_train: object,
    f_train: object,
    z_test: object,
    f_test: object,
    *,
    seed: int = 0,
    n_jobs: int = 2,
) -> dict[str, float]:
    """DCI (Eastwood & Williams): keys dci_disentanglement, dci_completeness,
    dci_informativeness. See ``dci_importance`` and ``dci_from_importance``."""
    importance, accuracy = dci_importance(
        z_train, f_train, z_test, f_test, seed=seed, n_jobs=n_jobs
    )
    return dci_from_importance(importance, accuracy)


# --------------------------------------------------------------------------------- SAP


def sap_score_matrix(
    z_train: object, f_train: object, z_test: object, f_test: object
) -> np.ndarray:
    """Predictability (latents x factors) of each factor from each single latent.

    A multinomial logistic regression on the standardized latent (train) is scored on test
    by balanced accuracy adjusted for chance and clipped at 0. Deviation from
    disentanglement_lib (raw accuracy of a linear SVM): with raw accuracy a 3-class factor
    caps the best-minus-second gap at about 0.67 even for a perfect latent. A 1-D multinomial
    model can give each class its own interval of the line, so an ordinal factor's identity
    latent is classifiable. Constant latents and single-valued factors score 0 unfitted.
    """
    z_tr, f_tr, z_te, f_te = _checked_split(z_train, f_train, z_test, f_test)
    threadpoolctl = _require("threadpoolctl", "SAP")
    scores = np.zeros((z_tr.shape[1], f_tr.shape[1]))
    constant = set(constant_dims(z_tr).tolist())
    mean, std = z_tr.mean(axis=0), z_tr.std(axis=0)
    # One-feature fits are too small for BLAS threads to pay off: on a busy machine their
    # spinning made SAP several times slower.
    with threadpoolctl.threadpool_limits(limits=1):
        for k in range(f_tr.shape[1]):
            if np.unique(f_tr[:, k]).size < 2:
                continue
            for j in range(z_tr.shape[1]):
                if j in constant:
                    continue
                x_tr = ((z_tr[:, j] - mean[j]) / std[j])[:, None]
                x_te = ((z_te[:, j] - mean[j]) / std[j])[:, None]
                scores[j, k] = _single_latent_score(x_tr, f_tr[:, k], x_te, f_te[:, k])
    return scores


def _single_latent_score(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Chance-adjusted balanced test accuracy (clipped at 0) of a 1-D multinomial logit."""
    linear_model = _require("sklearn.linear_model", "SAP")
    metrics = _require("sklearn.metrics", "SAP")
    exceptions = _require("sklearn.exceptions", "SAP")
    # Weak regularization (C = 1e4): with the default C = 1 the penalty keeps the slopes too
    # close together to give each of 40 ordinal classes its own interval (adjusted accuracy
    # ~0.4 for an identity latent at n = 10k, 1.0 with C = 1e4).
    model = linear_model.LogisticRegression(C=SAP_C, max_iter=_SAP_MAX_ITER)
    with warnings.catch_warnings():
        # Near-separable classes keep lbfgs creeping toward larger weights; the argmax (all
        # the score sees) settles long before, so stopping at max_iter is harmless.
        warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
        model.fit(x_train, y_train)
    with warnings.catch_warnings():
        # Test classes never predicted, or predicted but absent from the test set, are
        # expected for uninformative latents; the score handles them.
        warnings.simplefilter("ignore", UserWarning)
        score = metrics.balanced_accuracy_score(y_test, model.predict(x_test), adjusted=True)
    return max(float(score), 0.0)


def sap(z_train: object, f_train: object, z_test: object, f_test: object) -> float:
    """Separated Attribute Predictability: mean over factors of (best - second best) latent
    score from ``sap_score_matrix``. With a single latent the second best is taken as 0."""
    scores = sap_score_matrix(z_train, f_train, z_test, f_test)
    top = np.sort(scores, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros(top.shape[1])
    return float(np.mean(top[0] - second))


# ---------------------------------------------------------------------------- FactorVAE


def _value_groups(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per factor, rows sorted by value, and for each row the start and size of its group.

    Row ``r``'s value of factor k is shared by rows ``order[k, start[k, r] : start[k, r] +
    size[k, r]]``: drawing a batch with factor k fixed to that value is then one vectorized
    index computation instead of a Python loop per vote.
    """
    n, n_factors = f.shape
    order = np.empty((n_factors, n), dtype=np.int64)
    start = np.empty((n_factors, n), dtype=np.int64)
    size = np.empty((n_factors, n), dtype=np.int64)
    for k in range(n_factors):
        codes, m = _dense_codes(f[:, k])
        order[k] = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=m)
        offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
        start[k], size[k] = offsets[codes], counts[codes]
    return order, start, size


def _factorvae_votes(
    z_scaled: np.ndarray,
    groups: tuple[np.ndarray, np.ndarray, np.ndarray],
    factors: np.ndarray,
    n_votes: int,
    batch_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vote counts (kept latents x factors): for each vote, factor k (uniform over
    ``factors``) fixed to the value of a uniform reference row, ``batch_size`` rows with that
    value (with replacement), vote = (argmin latent variance over the batch, k)."""
    order, start, size = groups
    n = z_scaled.shape[0]
    counts = np.zeros((z_scaled.shape[1], factors.size), dtype=np.int64)
    for lo in range(0, n_votes, _VOTE_CHUNK):
        m = min(_VOTE_CHUNK, n_votes - lo)
        slot = rng.integers(factors.size, size=m)
        k = factors[slot]
        ref = rng.integers(n, size=m)
        offset = (rng.random((m, batch_size)) * size[k, ref][:, None]).astype(np.int64)
        rows = order[k[:, None], start[k, ref][:, None] + offset]
        latent = z_scaled[rows].var(axis=1).argmin(axis=1)
        np.add.at(counts, (latent, slot), 1)
    return counts


def factorvae_score(
    z: object,
    factors: object,
    *,
    seed: int = 0,
    batch_size: int = 64,
    n_train_votes: int = 10_000,
    n_eval_votes: int = 5_000,
    prune_std: float = FACTORVAE_PRUNE_STD,
) -> float:
    """FactorVAE score (Kim & Mnih): eval accuracy of a majority-vote latent -> factor map.

    Deviation: batches are drawn from the finite pool ``(z, factors)`` (rows sharing the fixed
    factor's value, with replacement) instead of disentanglement_lib's generative sampler.
    Latents are divided by their global std over the pool; latents with std < ``prune_std``
    are pruned, and if none remain the score is 0.0 (collapsed representation). Factors with
    a single value are skipped (nothing to fix); nan if every factor is. Each latent's class
    is the factor it votes for most in training (lowest factor index on ties).
    """
    z_arr, f_arr = _checked(z, factors, name="FactorVAE")
    if batch_size < 2 or n_train_votes < 1 or n_eval_votes < 1:
        raise ValueError("FactorVAE needs batch_size >= 2 and at least one train and eval vote")
    std = z_arr.std(axis=0)
    kept = std >= prune_std
    varying = np.flatnonzero([np.unique(f_arr[:, k]).size > 1 for k in range(f_arr.shape[1])])
    if varying.size == 0:
        return float("nan")
    if not kept.any():
        return 0.0
    z_scaled = z_arr[:, kept] / std[kept]
    groups = _value_groups(f_arr)
    rng = np.random.default_rng(seed)
    train = _factorvae_votes(z_scaled, groups, varying, n_train_votes, batch_size, rng)
    evaluation = _factorvae_votes(z_scaled, groups, varying, n_eval_votes, batch_size, rng)
    predicted = train.argmax(axis=1)
    correct = evaluation[np.arange(evaluation.shape[0]), predicted].sum()
    return float(correct / n_eval_votes)


# ---------------------------------------------------------------------------------- all


def supervised_metrics(
    z_train: object,
    f_train: object,
    z_test: object,
    f_test: object,
    *,
    seed: int = 0,
    n_jobs: int = 2,
) -> dict[str, float]:
    """All supervised metrics: mig, dci_disentanglement, dci_completeness,
    dci_informativeness, sap, factorvae_score.

    MIG uses the train arrays (as disentanglement_lib, which has no test split for it); DCI
    and SAP fit on train and score on test; FactorVAE's pool is train and test together, so
    each fixed-value batch is drawn from as many matching rows as there are.
    """
    z_tr, f_tr, z_te, f_te = _checked_split(z_train, f_train, z_test, f_test)
    pool_z, pool_f = np.concatenate([z_tr, z_te]), np.concatenate([f_tr, f_te])
    return {
        "mig": mig(z_tr, f_tr),
        **dci(z_tr, f_tr, z_te, f_te, seed=seed, n_jobs=n_jobs),
        "sap": sap(z_tr, f_tr, z_te, f_te),
        "factorvae_score": factorvae_score(pool_z, pool_f, seed=seed),
    }
