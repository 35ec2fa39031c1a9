"""Total correlation, covariance ratio, KS to a prior and NMSE: known answers."""

import numpy as np
import pytest
from scipy import stats

from sculptserve.stats.scores import (
    covariance_ratio,
    gaussian_total_correlation,
    ks_statistics,
    ks_to_prior,
    nmse_db,
)
from sculptserve.stats.validation import EmbeddingError


def equicorrelated(n, d, rho, seed=0):
    cov = (1 - rho) * np.eye(d) + rho * np.ones((d, d))
    return np.random.default_rng(seed).multivariate_normal(np.zeros(d), cov, size=n)


def test_total_correlation_of_equicorrelated_gaussian():
    d, rho = 4, 0.5
    expected = -0.5 * np.log((1 - rho) ** (d - 1) * (1 + (d - 1) * rho))
    result = gaussian_total_correlation(equicorrelated(200_000, d, rho))
    assert result.total_correlation == pytest.approx(expected, abs=0.01)
    # Each dimension's Gaussian MI with the rest, -0.5 log(1 - R^2), from the exact R^2.
    p_ii = (1 + (d - 2) * rho) / ((1 - rho) * (1 + (d - 1) * rho))
    np.testing.assert_allclose(result.per_dim, 0.5 * np.log(p_ii), atol=0.01)


def test_total_correlation_of_independent_dims_is_about_zero():
    z = np.random.default_rng(1).normal(size=(100_000, 4)) * [1, 10, 0.1, 3]
    assert abs(gaussian_total_correlation(z).total_correlation) < 0.002


def test_total_correlation_refuses_singular_covariance():
    z = np.random.default_rng(1).normal(size=(100, 2))
    with pytest.raises(EmbeddingError, match="singular"):
        gaussian_total_correlation(np.c_[z, z.sum(axis=1)])


def test_covariance_ratio_known_answer():
    d, rho = 4, 0.25
    result = covariance_ratio(equicorrelated(200_000, d, rho))
    assert result.covariance_ratio == pytest.approx(1 / ((d - 1) * rho), rel=0.03)
    np.testing.assert_allclose(result.per_dim, 1 / ((d - 1) * rho), rtol=0.05)


def test_covariance_ratio_grows_with_independence():
    dependent = covariance_ratio(equicorrelated(20_000, 4, 0.5)).covariance_ratio
    independent = covariance_ratio(equicorrelated(20_000, 4, 0.0)).covariance_ratio
    assert independent > 20 * dependent


def test_ks_statistics_match_scipy():
    x = np.random.default_rng(2).normal(size=(300, 3))
    ours = ks_statistics(stats.norm.cdf(x))
    theirs = [stats.kstest(x[:, i], "norm").statistic for i in range(3)]
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_ks_to_prior_accepts_own_samples_and_flags_a_shifted_dimension():
    from sculptserve.stats.priors import parse_prior

    prior = parse_prior("3:gaussian+2:uniform(-5,5)")
    z = prior.sample(2000, 0)
    good = ks_to_prior(z, prior)
    assert good.ks_max < 0.05
    assert min(good.p_values) > 0.001
    z[:, 3] = np.random.default_rng(3).normal(0, 2.9, size=2000)  # uniform dim turned gaussian
    bad = ks_to_prior(z, prior)
    assert bad.per_dim[3] > 0.05 and bad.p_values[3] < 1e-4
    assert max(bad.per_dim[:3]) < 0.05


def test_ks_to_prior_dimension_mismatch():
    from sculptserve.stats.priors import parse_prior

    with pytest.raises(EmbeddingError, match="3 dimensions but the prior has 2"):
        ks_to_prior(np.zeros((10, 3)), parse_prior("gaussian", dim=2))


def test_nmse_db_known_answers():
    x = np.random.default_rng(4).normal(size=(10, 8))
    assert nmse_db(x, 0.9 * x) == pytest.approx(-20.0, abs=1e-9)
    assert nmse_db(x, np.zeros_like(x)) == pytest.approx(0.0, abs=1e-12)
    assert nmse_db(x, x) == -np.inf


@pytest.mark.parametrize(
    ("x", "x_hat", "phrase"),
    [
        (np.ones((2, 3)), np.ones((3, 2)), "shapes differ"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "empty"),
        (np.zeros((2, 3)), np.ones((2, 3)), "all zero"),
    ],
)
def test_nmse_db_bad_input(x, x_hat, phrase):
    with pytest.raises(ValueError, match=phrase):
        nmse_db(x, x_hat)


@pytest.mark.parametrize("fn", [gaussian_total_correlation, covariance_ratio])
def test_dependence_scores_reject_bad_input(fn):
    with pytest.raises(EmbeddingError, match="constant"):
        fn(np.c_[np.random.default_rng(0).normal(size=(20, 2)), np.zeros(20)])
    with pytest.raises(EmbeddingError, match="NaN or Inf"):
        fn(np.full((20, 3), np.nan))
    with pytest.raises(EmbeddingError, match="at least 2 dimensions"):
        fn(np.zeros((20, 1)))
