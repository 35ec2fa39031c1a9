"""LPS: known answers for independent, linearly and non-linearly dependent latents."""

import numpy as np
import pytest

from sculptserve.stats.lps import (
    REGRESSORS,
    latent_predictability,
    linear_r2_from_covariance,
    predict_linear,
    split_and_standardize,
)
from sculptserve.stats.validation import EmbeddingError

ALL = sorted(REGRESSORS)


def independent(n=5000, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def with_dependent_pair(fn, noise, n=5000, seed=1):
    """Three independent gaussian dims, then dim 1 replaced by fn(dim 0) + noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    z[:, 1] = fn(z[:, 0]) + noise * rng.normal(size=n)
    return z


@pytest.mark.parametrize("regressor", ALL)
def test_independent_dimensions_score_about_zero(regressor):
    result = latent_predictability(independent(), regressor)
    assert abs(result.lps) < 0.05
    assert max(abs(v) for v in result.per_dim) < 0.06
    assert len(result.per_dim) == 5
    assert result.n_train == 4000 and result.n_test == 1000


@pytest.mark.parametrize("regressor", ALL)
def test_near_copy_scores_near_one(regressor):
    result = latent_predictability(with_dependent_pair(lambda a: a, noise=0.05), regressor)
    assert result.per_dim[0] > 0.95
    assert result.per_dim[1] > 0.95
    assert abs(result.per_dim[2]) < 0.05


@pytest.mark.parametrize("regressor", ["lgbm", "mlp"])
def test_nonlinear_dependence_seen_by_learned_regressors(regressor):
    result = latent_predictability(with_dependent_pair(np.square, noise=0.1), regressor)
    assert result.per_dim[1] > 0.8


def test_nonlinear_dependence_invisible_to_linear():
    result = latent_predictability(with_dependent_pair(np.square, noise=0.1), "linear")
    assert abs(result.per_dim[1]) < 0.05
    assert abs(result.lps) < 0.05


def test_closed_form_linear_equals_least_squares_fits():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    z = rng.normal(size=(800, 4)) @ rng.normal(size=(4, 4))
    train, test = split_and_standardize(z, 0.25, seed=5)
    closed = predict_linear(train, test, seed=0)
    for i in range(4):
        others = [j for j in range(4) if j != i]
        fitted = LinearRegression().fit(train[:, others], train[:, i]).predict(test[:, others])
        np.testing.assert_allclose(closed[:, i], fitted, atol=1e-9)


def test_covariance_r2_matches_equicorrelation_formula():
    d, rho = 5, 0.5
    cov = (1 - rho) * np.eye(d) + rho * np.ones((d, d))
    precision_diag = (1 + (d - 2) * rho) / ((1 - rho) * (1 + (d - 1) * rho))
    np.testing.assert_allclose(linear_r2_from_covariance(cov), 1 - 1 / precision_diag, rtol=1e-12)


def test_scale_of_each_dimension_does_not_matter():
    z = with_dependent_pair(lambda a: 2 * a, noise=0.5)
    scaled = z * np.array([1e3, 1e-3, 7.0])
    a = latent_predictability(z, "linear")
    b = latent_predictability(scaled, "linear")
    np.testing.assert_allclose(a.per_dim, b.per_dim, atol=1e-9)


def test_seeded_and_reproducible():
    z = with_dependent_pair(np.sin, noise=0.3, n=2000)
    assert latent_predictability(z, "lgbm", seed=4) == latent_predictability(z, "lgbm", seed=4)
    assert latent_predictability(z, "linear", seed=4) != latent_predictability(z, "linear", seed=5)


def test_max_samples_subsamples():
    result = latent_predictability(independent(n=3000), "linear", max_samples=1000)
    assert result.n_train + result.n_test == 1000


def test_result_serializes():
    d = latent_predictability(independent(n=500, d=3), "linear").to_dict()
    assert set(d) == {"lps", "per_dim", "regressor", "n_train", "n_test", "seed"}
    assert isinstance(d["per_dim"], list) and len(d["per_dim"]) == 3


@pytest.mark.parametrize(
    ("z", "phrase"),
    [
        (np.array([[0.0, np.nan]] * 50), "NaN or Inf"),
        (np.array([[0.0, np.inf]] * 50), "NaN or Inf"),
        (np.zeros(50), "2-D"),
        (np.zeros((0, 4)), "empty"),
        (np.random.default_rng(0).normal(size=(50, 1)), "at least 2 dimensions"),
        (np.c_[np.random.default_rng(0).normal(size=(50, 2)), np.ones(50)], "constant"),
        (np.random.default_rng(0).normal(size=(5, 3)), "at least 10 rows"),
        (np.random.default_rng(0).normal(size=(12, 11)), "too few"),
        ([["a", "b"]], "numeric"),
    ],
)
def test_bad_input_is_explained(z, phrase):
    with pytest.raises(EmbeddingError, match=phrase):
        latent_predictability(z, "linear")


def test_unknown_regressor_lists_valid_ones():
    with pytest.raises(ValueError, match="valid regressors: linear, lgbm, mlp"):
        latent_predictability(independent(), "xgboost")


def test_bad_test_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        latent_predictability(independent(), "linear", test_fraction=1.0)
