"""Latent Predictability Score: how well each latent dimension is predicted from the others.

For embeddings Z (n, d), each dimension i gets a regressor z_{-i} -> z_i fitted on a seeded
train split and scored by held-out R^2_i = 1 - SSE/SST. LPS = mean_i R^2_i: about 0 when no
dimension is predictable from the rest, 1 when every dimension is determined by the others.
R^2 is not clipped, so independent latents give slightly negative values.

Three regressors are registered: ``linear`` (closed form from the inverse covariance; exact
OLS, cheap enough for online use), ``lgbm`` (LightGBM, the paper's choice) and ``mlp``
(scikit-learn). R^2 only sees the conditional mean: dependence through the variance is
invisible to every variant, which is why MMD to the prior is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sculptserve.stats.results import Result
from sculptserve.stats.validation import EmbeddingError, as_embeddings, constant_dims

# A regressor predicts every column of ``test`` from the other columns, having fitted on
# ``train`` (both standardized). Returns the (n_test, d) predictions.
Regressor = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class LPSResult(Result):
    """LPS and its per-dimension held-out R^2 values."""

    lps: float
    per_dim: tuple[float, ...]
    regressor: str
    n_train: int
    n_test: int
    seed: int


def linear_r2_from_covariance(cov: np.ndarray) -> np.ndarray:
    """In-sample OLS R^2 of each dimension on all others, from a covariance matrix alone.

    R^2_i = 1 - 1 / (C_ii * P_ii) with P = C^-1: O(d^3), no fitting, which is what an online
    drift monitor can afford per window.
    """
    cov = np.asarray(cov, dtype=np.float64)
    precision = np.linalg.pinv(cov, hermitian=True)
    return 1.0 - 1.0 / (np.diag(cov) * np.diag(precision))


def predict_linear(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    """Exact OLS of each column on the others, for all columns at once.

    With P the inverse of the train covariance, the OLS residual of column i is
    ((z - mu) @ P)_i / P_ii, so predictions need one d x d inverse instead of d fits.
    """
    del seed  # closed form: nothing random
    mean = train.mean(axis=0)
    precision = np.linalg.pinv(np.cov(train, rowvar=False), hermitian=True)
    residual = ((test - mean) @ precision) / np.diag(precision)
    return test - residual


def _per_dimension(
    fit_predict: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> Regressor:
    """Turn a one-target fit/predict function into a Regressor that loops over dimensions."""

    def regressor(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
        preds = np.empty_like(test)
        for i in range(train.shape[1]):
            others = np.delete(np.arange(train.shape[1]), i)
            preds[:, i] = fit_predict(train[:, others], train[:, i], test[:, others], seed)
        return preds

    return regressor


def _require(module: str, regressor: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"LPS regressor '{regressor}' needs the package '{module}': "
            "pip install 'sculptserve[eval]'"
        ) from None


def _fit_predict_lgbm(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
) -> np.ndarray:
    lightgbm = _require("lightgbm", "lgbm")
    # Small, regularized trees: the default 31 leaves overfit pure noise to R^2 ~ -0.08 at
    # n = 5k, which would bias LPS of independent latents well below 0.
    model = lightgbm.LGBMRegressor(
        n_estimators=100,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=50,
        random_state=seed,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )
    model.fit(x_train, y_train)
    return model.predict(x_test)


def _fit_predict_mlp(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
) -> np.ndarray:
    neural_network = _require("sklearn.neural_network", "mlp")
    # Strong L2 (alpha) matters: with d - 1 mostly irrelevant inputs, sklearn's default 1e-4
    # overfits them and early stopping ends before the signal is learned (held-out R^2 of
    # 0.03 for z2 = sin(2 z1) + noise among 63 noise inputs, 0.78 with these settings).
    model = neural_network.MLPRegressor(
        hidden_layer_sizes=(64, 64),
        alpha=3.0,
        batch_size=256,
        learning_rate_init=3e-3,
        max_iter=200,
        early_stopping=True,
        n_iter_no_change=10,
        tol=1e-6,
        random_state=seed,
    )
    model.fit(x_train, y_train)
    return model.predict(x_test)


REGRESSORS: dict[str, Regressor] = {
    "linear": predict_linear,
    "lgbm": _per_dimension(_fit_predict_lgbm),
    "mlp": _per_dimension(_fit_predict_mlp),
}


def r2_per_column(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Coefficient of determination of each column (unclipped, as scikit-learn's r2_score)."""
    sse = ((target - prediction) ** 2).sum(axis=0)
    sst = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    return 1.0 - sse / sst


def split_and_standardize(
    z: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split; both halves standardized with the train statistics."""
    order = np.random.default_rng(seed).permutation(len(z))
    n_test = round(len(z) * test_fraction)
    test, train = z[order[:n_test]], z[order[n_test:]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0  # a dimension constant on the train split only; R^2 still defined
    return (train - mean) / std, (test - mean) / std


def latent_predictability(
    z: object,
    regressor: str = "linear",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_samples: int | None = None,
) -> LPSResult:
    """Score how predictable each dimension of ``z`` (n, d) is from the others.

    ``max_samples`` draws a seeded subsample first (the learned regressors cost O(n d)
    fits). Raises EmbeddingError for input that cannot be scored and ValueError for an
    unknown regressor.
    """
    if regressor not in REGRESSORS:
        raise ValueError(
            f"unknown LPS regressor '{regressor}'; valid regressors: {', '.join(REGRESSORS)}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    arr = as_embeddings(z, min_rows=10, min_dims=2)
    if max_samples is not None and len(arr) > max_samples:
        keep = np.random.default_rng(seed).choice(len(arr), size=max_samples, replace=False)
        arr = arr[np.sort(keep)]
    flat = constant_dims(arr)
    if flat.size:
        raise EmbeddingError(
            f"dimension(s) {flat.tolist()} are constant: their predictability is undefined; "
            "drop them before scoring"
        )
    train, test = split_and_standardize(arr, test_fraction, seed)
    if len(test) < 2 or len(train) <= arr.shape[1]:
        raise EmbeddingError(
            f"{len(arr)} rows are too few to fit and test {arr.shape[1]} dimensions; "
            f"need more than {arr.shape[1] / (1 - test_fraction):.0f}"
        )
    flat_test = constant_dims(test)
    if flat_test.size:
        raise EmbeddingError(
            f"dimension(s) {flat_test.tolist()} are constant on the {len(test)}-row test split; "
            "pass more rows or a larger test_fraction"
        )
    per_dim = r2_per_column(test, REGRESSORS[regressor](train, test, seed))
    return LPSResult(
        lps=float(per_dim.mean()),
        per_dim=tuple(float(v) for v in per_dim),
        regressor=regressor,
        n_train=len(train),
        n_test=len(test),
        seed=seed,
    )
