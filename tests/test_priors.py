"""Tests for sculptserve.stats.priors: statistics, parsing, serialization and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import optimize, stats

from sculptserve.stats.priors import (
    PRIOR_KINDS,
    CorrelatedPrior,
    EmpiricalPrior,
    GaussianPrior,
    HybridPrior,
    LaplacePrior,
    MixturePrior,
    Prior,
    PriorSpecError,
    UniformPrior,
    load_prior_file,
    parse_prior,
    prior_from_dict,
)

VALID_KINDS = "valid kinds: correlated, empirical, gaussian, hybrid, laplace, mixture, uniform"

# One representative spec per kind (plus the equicorrelated form), with unequal parameters per
# dimension so that a mix-up of dimensions shows.
SPECS: dict[str, dict] = {
    "gaussian": {"kind": "gaussian", "dim": 3, "mean": [0.0, 1.0, -2.0], "std": [1.0, 2.0, 0.5]},
    "uniform": {"kind": "uniform", "dim": 2, "low": [-5.0, 0.0], "high": [5.0, 1.0]},
    "laplace": {"kind": "laplace", "dim": 2, "loc": [0.0, 3.0], "scale": [1.0, 0.5]},
    "mixture": {
        "kind": "mixture",
        "dim": 2,
        "weights": [1.0, 3.0],
        "means": [-2.0, 1.0],
        "stds": [0.5, 1.0],
    },
    "hybrid": {
        "kind": "hybrid",
        "components": [
            {"kind": "uniform", "dim": 2, "low": 10.0, "high": 11.0},
            {"kind": "gaussian", "dim": 1, "std": 3.0},
            {"kind": "mixture", "dim": 1, "means": [-5.0, 5.0], "stds": [1.0, 1.0]},
        ],
    },
    "correlated": {
        "kind": "correlated",
        "mean": [1.0, -1.0, 0.0],
        "cov": [[2.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 0.5]],
    },
    "correlated_rho": {"kind": "correlated", "dim": 4, "rho": 0.4},
}
CASES = [*SPECS, "empirical"]
CONTINUOUS = [c for c in CASES if c != "empirical"]


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A skewed, correlated 3-column bank (exponential, gaussian, their sum)."""
    rng = np.random.default_rng(123)
    a = rng.exponential(2.0, 4000)
    b = rng.normal(0.0, 1.0, 4000)
    path = tmp_path_factory.mktemp("bank") / "bank.npy"
    np.save(path, np.stack([a, b, a + b], axis=1))
    return path


@pytest.fixture(params=CASES)
def prior(request: pytest.FixtureRequest, bank_path: Path) -> Prior:
    if request.param == "empirical":
        return prior_from_dict({"kind": "empirical", "path": str(bank_path)})
    return prior_from_dict(SPECS[request.param])


def marginal_cdf(p: Prior, j: int):
    """1-D cdf of dimension j, for scipy.stats.kstest."""

    def cdf(v: np.ndarray) -> np.ndarray:
        x = np.zeros((len(v), p.dim))
        x[:, j] = v
        return p.cdf(x)[:, j]

    return cdf


# --------------------------------------------------------------------------------------------
# Statistics for every kind
# --------------------------------------------------------------------------------------------


def test_registry_has_the_seven_kinds():
    assert sorted(PRIOR_KINDS) == [
        "correlated",
        "empirical",
        "gaussian",
        "hybrid",
        "laplace",
        "mixture",
        "uniform",
    ]
    assert all(issubclass(cls, Prior) for cls in PRIOR_KINDS.values())


def test_sample_shape_and_dtype(prior: Prior):
    x = prior.sample(7, rng=0)
    assert x.shape == (7, prior.dim)
    assert x.dtype == np.float64
    assert prior.sample(0, rng=0).shape == (0, prior.dim)
    assert prior.mean().shape == prior.var().shape == (prior.dim,)


def test_sample_moments_match_mean_and_var(prior: Prior):
    n = 200_000
    x = prior.sample(n, rng=2024)
    mean, var = prior.mean(), prior.var()
    # 5 standard errors; the SE of the variance uses the sample's own fourth moment
    se_mean = np.sqrt(var / n)
    np.testing.assert_array_less(np.abs(x.mean(axis=0) - mean), 5 * se_mean)
    centered = x - x.mean(axis=0)
    s2 = (centered**2).mean(axis=0)
    se_var = np.sqrt(((centered**4).mean(axis=0) - s2**2) / n)
    np.testing.assert_array_less(np.abs(s2 - var), 5 * se_var)


def test_samples_pass_ks_against_own_cdf(prior: Prior):
    x = prior.sample(5000, rng=7)
    for j in range(prior.dim):
        p_value = stats.kstest(x[:, j], marginal_cdf(prior, j)).pvalue
        assert p_value > 1e-3, (j, p_value)


def test_ks_check_detects_a_wrong_prior():
    # the check above can fail: uniform samples against a gaussian cdf with equal variance
    x = prior_from_dict({"kind": "uniform", "dim": 1, "low": -3.0, "high": 3.0}).sample(5000, 7)
    wrong = prior_from_dict({"kind": "gaussian", "dim": 1, "std": np.sqrt(3.0)})
    assert stats.kstest(x[:, 0], marginal_cdf(wrong, 0)).pvalue < 1e-6


@pytest.mark.parametrize("case", CONTINUOUS)
def test_ppf_inverts_cdf(case: str):
    p = prior_from_dict(SPECS[case])
    x = p.sample(3000, rng=11)
    np.testing.assert_allclose(p.ppf(p.cdf(x)), x, rtol=0, atol=1e-6)
    u = np.tile(np.linspace(1e-4, 1 - 1e-4, 501)[:, None], (1, p.dim))
    np.testing.assert_allclose(p.cdf(p.ppf(u)), u, rtol=0, atol=1e-6)
    # monotone marginal quantiles, infinite ends only where the support is unbounded
    q = p.ppf(u)
    assert np.all(np.diff(q, axis=0) > 0)


def test_ppf_endpoints():
    g = prior_from_dict({"kind": "gaussian", "dim": 1})
    u = prior_from_dict({"kind": "uniform", "dim": 1, "low": -5.0, "high": 5.0})
    m = prior_from_dict({"kind": "mixture", "dim": 1, "means": [0.0, 3.0], "stds": [1.0, 1.0]})
    ends = np.array([[0.0], [1.0]])
    assert g.ppf(ends).ravel().tolist() == [-np.inf, np.inf]
    assert m.ppf(ends).ravel().tolist() == [-np.inf, np.inf]
    assert u.ppf(ends).ravel().tolist() == [-5.0, 5.0]


# --------------------------------------------------------------------------------------------
# Cross-checks against scipy.stats
# --------------------------------------------------------------------------------------------

GRID = np.linspace(-12.0, 12.0, 481)
U_GRID = np.linspace(0.001, 0.999, 199)


def test_gaussian_matches_scipy_norm():
    p = prior_from_dict(SPECS["gaussian"])
    x = np.tile(GRID[:, None], (1, 3))
    u = np.tile(U_GRID[:, None], (1, 3))
    ref = stats.norm(loc=[0.0, 1.0, -2.0], scale=[1.0, 2.0, 0.5])
    np.testing.assert_allclose(p.cdf(x), ref.cdf(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.ppf(u), ref.ppf(u), rtol=1e-12, atol=1e-12)


def test_uniform_matches_scipy_uniform():
    p = prior_from_dict(SPECS["uniform"])
    x = np.tile(GRID[:, None], (1, 2))
    u = np.tile(U_GRID[:, None], (1, 2))
    ref = stats.uniform(loc=[-5.0, 0.0], scale=[10.0, 1.0])
    np.testing.assert_allclose(p.cdf(x), ref.cdf(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.ppf(u), ref.ppf(u), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.var(), ref.var())


def test_laplace_matches_scipy_laplace():
    p = prior_from_dict(SPECS["laplace"])
    x = np.tile(GRID[:, None], (1, 2))
    u = np.tile(U_GRID[:, None], (1, 2))
    ref = stats.laplace(loc=[0.0, 3.0], scale=[1.0, 0.5])
    np.testing.assert_allclose(p.cdf(x), ref.cdf(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.ppf(u), ref.ppf(u), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p.var(), ref.var())


def test_mixture_matches_weighted_norms_and_brentq():
    p = prior_from_dict(SPECS["mixture"])
    w = np.array([0.25, 0.75])  # weights [1, 3] normalized
    ref_cdf = w[0] * stats.norm.cdf(GRID, -2.0, 0.5) + w[1] * stats.norm.cdf(GRID, 1.0, 1.0)
    got = p.cdf(np.tile(GRID[:, None], (1, 2)))
    np.testing.assert_allclose(got[:, 0], ref_cdf, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[:, 0], got[:, 1])  # i.i.d. over dimensions
    for q in (1e-6, 0.01, 0.25, 0.5, 0.9, 1 - 1e-6):

        def f(x: float, q: float = q) -> float:
            return w[0] * stats.norm.cdf(x, -2.0, 0.5) + w[1] * stats.norm.cdf(x, 1.0, 1.0) - q

        root = optimize.brentq(f, -50, 50, xtol=1e-14, rtol=1e-14)
        assert abs(p.ppf(np.full((1, 2), q))[0, 0] - root) < 1e-9
    assert p.mean()[0] == pytest.approx(w @ [-2.0, 1.0], abs=1e-12)
    second = w @ (np.array([0.5, 1.0]) ** 2 + np.array([-2.0, 1.0]) ** 2)
    assert p.var()[0] == pytest.approx(second - (w @ [-2.0, 1.0]) ** 2, abs=1e-12)


def test_mixture_ppf_between_far_modes():
    # flat density between the modes forces the bisection fallback; the answer is still exact
    p = parse_prior("bimodal(10,1)", dim=1)
    u = np.array([[0.001], [0.3], [0.5], [0.7], [0.999]])
    np.testing.assert_allclose(p.cdf(p.ppf(u)), u, rtol=0, atol=1e-12)
    assert p.ppf(np.array([[0.5]]))[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_mixture_ppf_with_a_narrow_component():
    # a spike (std 1e-3) on a wide component: plain safeguarded Newton used to stall here
    p = parse_prior("mixture(0,1,0,1e-3,30,0.1)", dim=1)
    u = np.concatenate([np.linspace(0.16, 0.17, 20_001), np.linspace(0.49, 0.51, 20_001)])
    np.testing.assert_allclose(p.cdf(p.ppf(u[:, None]))[:, 0], u, rtol=0, atol=1e-9)


def test_correlated_marginals_match_scipy_norm():
    p = prior_from_dict(SPECS["correlated"])
    std = np.sqrt([2.0, 1.0, 0.5])
    x = np.tile(GRID[:, None], (1, 3))
    np.testing.assert_allclose(p.cdf(x), stats.norm.cdf(x, [1.0, -1.0, 0.0], std), atol=1e-12)
    np.testing.assert_allclose(p.var(), [2.0, 1.0, 0.5])


@pytest.mark.parametrize("case", ["correlated", "correlated_rho"])
def test_correlated_sample_covariance(case: str):
    p = prior_from_dict(SPECS[case])
    x = p.sample(200_000, rng=5)
    assert isinstance(p, CorrelatedPrior)
    np.testing.assert_allclose(np.cov(x, rowvar=False), p.covariance(), rtol=0, atol=0.02)
    np.testing.assert_allclose(x.mean(axis=0), p.mean(), rtol=0, atol=0.02)


def test_correlated_rho_builds_equicorrelation():
    p = parse_prior("correlated(0.3)", dim=3)
    expected = np.full((3, 3), 0.3) + 0.7 * np.eye(3)
    np.testing.assert_allclose(p.covariance(), expected)


# --------------------------------------------------------------------------------------------
# Empirical prior
# --------------------------------------------------------------------------------------------


def test_empirical_statistics_come_from_the_bank(bank_path: Path):
    bank = np.load(bank_path)
    p = prior_from_dict({"kind": "empirical", "path": str(bank_path)})
    assert isinstance(p, EmpiricalPrior)
    assert p.dim == 3
    np.testing.assert_allclose(p.mean(), bank.mean(axis=0))
    np.testing.assert_allclose(p.var(), bank.var(axis=0))
    # samples are rows of the bank: the dependence between columns is kept
    x = p.sample(500, rng=1)
    rows = {tuple(r) for r in bank}
    assert all(tuple(r) in rows for r in x)
    np.testing.assert_allclose(x[:, 2], x[:, 0] + x[:, 1], atol=1e-12)


def test_empirical_cdf_and_ppf(bank_path: Path):
    bank = np.load(bank_path)
    p = prior_from_dict({"kind": "empirical", "path": str(bank_path)})
    x = np.random.default_rng(3).normal(1.0, 2.0, (300, 3))
    expected = (bank[None, :, :] <= x[:, None, :]).mean(axis=1)
    np.testing.assert_allclose(p.cdf(x), expected, rtol=0, atol=1e-15)
    u = np.random.default_rng(4).random((300, 3))
    for j in range(3):
        ref = np.quantile(bank[:, j], u[:, j], method="inverted_cdf")
        np.testing.assert_array_equal(p.ppf(u)[:, j], ref)
    # on bank values the inverse is exact; elsewhere cdf(ppf(u)) is u rounded up to a 1/n step
    np.testing.assert_array_equal(p.ppf(p.cdf(bank[:50])), bank[:50])
    cu = p.cdf(p.ppf(u))
    assert np.all(cu >= u) and np.all(cu < u + 1.0 / len(bank) + 1e-12)


def test_empirical_relative_path_resolved_against_spec_file(tmp_path: Path):
    bank = np.random.default_rng(0).normal(size=(50, 2))
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "b.npy", bank)
    spec_file = tmp_path / "prior.yaml"
    spec_file.write_text(yaml.safe_dump({"kind": "empirical", "path": "data/b.npy"}))
    p = load_prior_file(spec_file)
    assert Path(p.path) == tmp_path / "data" / "b.npy"
    np.testing.assert_allclose(p.mean(), bank.mean(axis=0))
    # and in a short form held by a file
    short_file = tmp_path / "short.yml"
    short_file.write_text(yaml.safe_dump("2:empirical(data/b.npy)+1:gaussian"))
    h = load_prior_file(short_file)
    assert h.dim == 3 and Path(h.components[0].path) == tmp_path / "data" / "b.npy"


def test_empirical_dim_must_match_file(bank_path: Path):
    assert prior_from_dict({"kind": "empirical", "path": str(bank_path), "dim": 3}).dim == 3
    with pytest.raises(PriorSpecError, match="has 3 columns but dim is 4"):
        prior_from_dict({"kind": "empirical", "path": str(bank_path), "dim": 4})
    with pytest.raises(PriorSpecError, match="prior has 3 dimensions but 5 were requested"):
        prior_from_dict({"kind": "empirical", "path": str(bank_path)}, dim=5)


def _save(path: Path, arr: np.ndarray, allow_pickle: bool = False) -> str:
    np.save(path, arr, allow_pickle=allow_pickle)
    return str(path)


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda d: str(d / "nope.npy"), "does not exist"),
        (lambda d: _save(d / "flat.npy", np.zeros(10)), "must be a 2-D array"),
        (lambda d: _save(d / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]])), "all finite"),
        (lambda d: _save(d / "inf.npy", np.array([[0.0, 1.0], [np.inf, 2.0]])), "all finite"),
        (lambda d: _save(d / "one.npy", np.zeros((1, 3))), "at least 2 rows"),
        (lambda d: _save(d / "str.npy", np.array([["a", "b"], ["c", "d"]])), "real numbers"),
        (
            lambda d: _save(d / "obj.npy", np.array([[{"a": 1}], [None]], dtype=object), True),
            "without pickle",
        ),
    ],
    ids=["missing", "1d", "nan", "inf", "one-row", "strings", "pickle"],
)
def test_empirical_bad_banks(tmp_path: Path, make, phrase: str):
    path = make(tmp_path)
    for dim in (None, 2):  # header check (dim from file) and full load (dim given)
        spec = {"kind": "empirical", "path": path, **({"dim": dim} if dim else {})}
        with pytest.raises(PriorSpecError) as info:
            prior_from_dict(spec)
        assert phrase in str(info.value)
        assert Path(path).name in str(info.value)


# --------------------------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------------------------


def test_json_round_trip(prior: Prior):
    d = prior.to_dict()
    assert d["kind"] == prior.kind
    assert json.loads(prior.to_json()) == d
    for again in (prior_from_dict(d), parse_prior(prior.to_json()), prior_from_dict(d, prior.dim)):
        assert again == prior
        assert type(again) is type(prior)
        assert hash(again) == hash(prior)
        np.testing.assert_array_equal(again.sample(100, rng=9), prior.sample(100, rng=9))


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_round_trip(prior: Prior, tmp_path: Path, suffix: str):
    path = tmp_path / f"prior{suffix}"
    dump = json.dumps if suffix == ".json" else yaml.safe_dump
    path.write_text(dump(prior.to_dict()))
    assert load_prior_file(path) == prior
    assert parse_prior(str(path)) == prior
    assert load_prior_file(path, dim=prior.dim) == prior


def test_dict_form_of_hybrid_and_nesting():
    h = prior_from_dict(SPECS["hybrid"])
    assert isinstance(h, HybridPrior)
    d = h.to_dict()
    assert d["kind"] == "hybrid" and d["dim"] == 4
    assert [c["kind"] for c in d["components"]] == ["uniform", "gaussian", "mixture"]
    nested = prior_from_dict({"kind": "hybrid", "components": [d, {"kind": "laplace", "dim": 2}]})
    assert nested.dim == 6
    assert prior_from_dict(nested.to_dict()) == nested
    x = nested.sample(1000, rng=0)
    assert np.all((x[:, :2] >= 10) & (x[:, :2] <= 11))


def test_unequal_specs_compare_unequal():
    a = prior_from_dict({"kind": "gaussian", "dim": 2})
    assert a != prior_from_dict({"kind": "gaussian", "dim": 2, "std": 2.0})
    assert a != prior_from_dict({"kind": "gaussian", "dim": 3})
    assert a != prior_from_dict({"kind": "laplace", "dim": 2})


def test_priors_are_frozen():
    p = prior_from_dict({"kind": "gaussian", "dim": 2})
    with pytest.raises(ValueError):
        p.std = 3.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Short CLI form
# --------------------------------------------------------------------------------------------


def test_short_gaussian_takes_dim_from_argument():
    p = parse_prior("gaussian", dim=4)
    assert p == GaussianPrior(dim=4)
    assert p.to_dict() == {"kind": "gaussian", "dim": 4, "mean": 0.0, "std": 1.0}


def test_short_forms_with_arguments():
    assert parse_prior("uniform(-5,5)", dim=3) == UniformPrior(dim=3, low=-5.0, high=5.0)
    assert parse_prior("normal(0,2)", dim=2) == GaussianPrior(dim=2, mean=0.0, std=2.0)
    assert parse_prior("gaussian(1, 3)", dim=2) == GaussianPrior(dim=2, mean=1.0, std=3.0)
    assert parse_prior("laplace(1,0.5)", dim=1) == LaplacePrior(dim=1, loc=1.0, scale=0.5)
    m = parse_prior("mixture(-1,0.5,2,1)", dim=2)
    assert m == MixturePrior(dim=2, means=(-1.0, 2.0), stds=(0.5, 1.0))
    assert parse_prior("uniform(-1e+3,1e+3)", dim=1) == UniformPrior(dim=1, low=-1e3, high=1e3)
    assert parse_prior("5:gaussian") == GaussianPrior(dim=5)
    assert parse_prior("Gaussian", dim=2) == GaussianPrior(dim=2)


def test_short_hybrid_gaussian_uniform():
    p = parse_prior("8:gaussian+2:uniform(-1,1)")
    assert isinstance(p, HybridPrior)
    assert p.dim == 10
    assert [(c.kind, c.dim) for c in p.components] == [("gaussian", 8), ("uniform", 2)]
    assert parse_prior("8:gaussian+2:uniform(-1,1)", dim=10) == p


def test_short_bimodal_plus_laplace():
    p = parse_prior("4:bimodal(5,1)+4:laplace")
    assert p.dim == 8
    mix, lap = p.components
    assert mix == MixturePrior(dim=4, means=(-5.0, 5.0), stds=(1.0, 1.0))
    assert lap == LaplacePrior(dim=4)
    x = p.sample(20_000, rng=0)
    assert np.mean(np.abs(x[:, :4]) > 2.0) > 0.99  # bimodal: almost no mass near 0
    assert np.mean(np.abs(x[:, 4:]) > 2.0) < 0.2  # laplace(0,1): P(|x| > 2) = e^-2


def test_short_whitespace_is_tolerated():
    assert parse_prior("  8 : gaussian + 2 : uniform( -1 , 1 ) ") == parse_prior(
        "8:gaussian+2:uniform(-1,1)"
    )


def test_short_hybrid_keeps_block_order():
    p = parse_prior("2:uniform(10,11)+3:gaussian")
    x = p.sample(10_000, rng=3)
    assert np.all((x[:, :2] >= 10) & (x[:, :2] <= 11))
    assert np.all(np.abs(x[:, 2:].mean(axis=0)) < 0.05)
    assert np.all(np.abs(x[:, 2:].std(axis=0) - 1) < 0.05)
    np.testing.assert_allclose(p.mean(), [10.5, 10.5, 0, 0, 0])
    np.testing.assert_allclose(p.var(), [1 / 12, 1 / 12, 1, 1, 1])
    # cdf/ppf route each block to its own prior
    u = np.full((1, 5), 0.5)
    np.testing.assert_allclose(p.ppf(u), [[10.5, 10.5, 0, 0, 0]], atol=1e-12)


def test_short_one_unsized_block_takes_the_rest():
    p = parse_prior("2:uniform(10,11)+gaussian", dim=5)
    assert [(c.kind, c.dim) for c in p.components] == [("uniform", 2), ("gaussian", 3)]


def test_short_correlated_and_empirical(bank_path: Path):
    c = parse_prior("correlated(0.5)", dim=3)
    assert c == CorrelatedPrior(dim=3, rho=0.5)
    e = parse_prior(f"empirical({bank_path})")
    assert e == EmpiricalPrior(path=str(bank_path))
    assert e.dim == 3
    h = parse_prior(f"3:empirical({bank_path})+2:gaussian")
    assert h.dim == 5


def test_parse_inline_json_and_dim_argument():
    text = '{"kind": "uniform", "low": -5, "high": 5}'
    assert parse_prior(text, dim=3) == UniformPrior(dim=3, low=-5.0, high=5.0)
    # a dimension implied by list lengths is checked against the argument
    assert prior_from_dict({"kind": "gaussian", "mean": [0, 1]}).dim == 2
    with pytest.raises(PriorSpecError, match="prior has 2 dimensions but 3 were requested"):
        prior_from_dict({"kind": "gaussian", "mean": [0, 1]}, dim=3)


# --------------------------------------------------------------------------------------------
# Invalid input: the error type and a key phrase of the message
# --------------------------------------------------------------------------------------------

BAD_DICTS = [
    ({"kind": "gaussian", "dim": 2, "std": -1.0}, "gaussian: std must be > 0 (got -1.0)"),
    ({"kind": "gaussian", "dim": 2, "std": [1.0, 0.0]}, "std must be > 0"),
    ({"kind": "uniform", "dim": 1, "low": 1.0, "high": 1.0}, "low must be < high"),
    ({"kind": "uniform", "dim": 2, "low": [0, 3], "high": 2}, "low must be < high"),
    ({"kind": "laplace", "dim": 1, "scale": 0.0}, "scale must be > 0"),
    ({"kind": "mixture", "dim": 1, "means": [0, 1], "stds": [1, -1]}, "stds must be > 0"),
    ({"kind": "mixture", "dim": 1, "means": [0, 1], "stds": [1]}, "same length"),
    ({"kind": "mixture", "dim": 1, "weights": [-1, 2], "means": [0, 1], "stds": [1, 1]}, ">= 0"),
    ({"kind": "mixture", "dim": 1, "weights": [0, 0], "means": [0, 1], "stds": [1, 1]}, "sum"),
    ({"kind": "mixture", "dim": 1, "stds": [1]}, "missing required field 'means'"),
    ({"kind": "gausian", "dim": 2}, "unknown prior kind 'gausian'"),
    ({"dim": 2}, "no 'kind'"),
    ({"kind": "gaussian", "dim": 3, "mean": [0.0, 1.0]}, "mean has 2 values but dim is 3"),
    ({"kind": "laplace", "dim": 2, "scale": [1, 1, 1]}, "scale has 3 values but dim is 2"),
    ({"kind": "gaussian", "dim": 2, "mean": float("nan")}, "mean: must be a finite number"),
    ({"kind": "gaussian", "dim": 2, "std": float("inf")}, "std: must be a finite number"),
    ({"kind": "uniform", "dim": 2, "low": [0, float("nan")], "high": 1}, "finite"),
    ({"kind": "mixture", "dim": 1, "means": [float("nan")], "stds": [1]}, "finite"),
    ({"kind": "correlated", "dim": 2, "rho": float("inf")}, "rho: input should be a finite"),
    ({"kind": "gaussian", "dim": 2, "std": "wide"}, "std: must be a number"),
    ({"kind": "gaussian", "dim": 2, "sd": 1.0}, "unknown field 'sd'"),
    ({"kind": "gaussian", "dim": 0}, "dim: input should be greater than or equal to 1"),
    ({"kind": "gaussian"}, "needs a dimension"),
    ({"kind": "correlated", "cov": [[1.0, 0.1], [0.2, 1.0]]}, "cov must be symmetric"),
    ({"kind": "correlated", "cov": [[1.0, 2.0], [2.0, 1.0]]}, "positive definite"),
    ({"kind": "correlated", "dim": 2, "cov": [[1.0, 0.0], [0.0]]}, "2 x 2 matrix"),
    ({"kind": "correlated", "dim": 4, "rho": -0.5}, "-1/(dim-1) < rho < 1"),
    ({"kind": "correlated", "dim": 2, "rho": 1.0}, "-1/(dim-1) < rho < 1"),
    ({"kind": "correlated", "dim": 2}, "either cov"),
    ({"kind": "correlated", "dim": 1, "rho": 0.1, "cov": [[1.0]]}, "either cov"),
    ({"kind": "hybrid", "components": []}, "non-empty list"),
    ({"kind": "hybrid", "components": [{"kind": "gaussian"}]}, "component 1: gaussian: needs"),
    (
        {"kind": "hybrid", "components": [{"kind": "gaussian", "dim": 1}, {"kind": "x"}]},
        "component 2: unknown prior kind 'x'",
    ),
    ({"kind": "hybrid", "dim": 3, "components": [{"kind": "gaussian", "dim": 2}]}, "add up to 2"),
]


@pytest.mark.parametrize(("spec", "phrase"), BAD_DICTS)
def test_bad_dict_specs(spec: dict, phrase: str):
    with pytest.raises(PriorSpecError) as info:
        prior_from_dict(spec)
    message = str(info.value)
    assert phrase in message
    assert message.endswith("; " + VALID_KINDS)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_unknown_kind_message_is_exact():
    with pytest.raises(PriorSpecError) as info:
        prior_from_dict({"kind": "gausian"})
    assert str(info.value) == "unknown prior kind 'gausian'; " + VALID_KINDS


def test_dim_argument_mismatch_and_missing():
    with pytest.raises(PriorSpecError) as info:
        prior_from_dict({"kind": "gaussian", "dim": 10}, dim=8)
    assert "prior has 10 dimensions but 8 were requested (--latent-dim)" in str(info.value)
    with pytest.raises(PriorSpecError, match="prior has 10 dimensions but 8 were requested"):
        parse_prior("8:gaussian+2:uniform(-1,1)", dim=8)
    with pytest.raises(PriorSpecError, match="needs a dimension"):
        parse_prior("gaussian")
    with pytest.raises(PriorSpecError, match="needs a dimension"):
        parse_prior("correlated(0.2)")
    with pytest.raises(PriorSpecError, match="positive integer"):
        parse_prior("gaussian", dim=0)


BAD_SHORT = [
    ("uniform(-5)", "could not parse prior 'uniform(-5)': uniform takes (low, high)"),
    ("gaussian(1)", "gaussian takes (mean, std)"),
    ("uniform(-5,5", "unbalanced parentheses"),
    ("uniform-5,5)", "unbalanced parentheses"),
    ("uniform(a,5)", "'a' is not a number"),
    ("uniform(,5)", "uniform takes (low, high)"),
    ("0:gaussian", "block size must be >= 1"),
    ("-3:gaussian", "block size must be >= 1"),
    ("bimodal(1)", "bimodal takes (offset, std)"),
    ("mixture(1,2,3)", "mixture takes (mean1, std1, mean2, std2, ...)"),
    ("mixture", "mixture takes"),
    ("correlated", "correlated takes (rho)"),
    ("empirical", "empirical takes (path/to/bank.npy)"),
    ("hybrid", "blocks joined by '+'"),
    ("gaussain", "unknown prior 'gaussain'"),
    ("", "the prior is empty"),
    ("2:gaussian+", "is not of the form [N:]NAME[(ARGS)]"),
    ("gaussian(1)(2)", "is not of the form"),
    ("8 gaussian", "is not of the form"),
    ("gaussian+uniform+laplace", "every block needs a size N:"),
    ("4:uniform(2,1)", "invalid prior block '4:uniform(2,1)': uniform: low must be < high"),
    ("4:gaussian+2:gaussian(0,-1)", "invalid prior block '2:gaussian(0,-1)'"),
    ("{not json", "could not parse prior JSON"),
    ("missing_prior.yaml", "does not exist"),
]


@pytest.mark.parametrize(("text", "phrase"), BAD_SHORT)
def test_bad_short_forms(text: str, phrase: str):
    with pytest.raises(PriorSpecError) as info:
        parse_prior(text, dim=6)
    assert phrase in str(info.value)
    assert str(info.value).endswith(VALID_KINDS)


def test_unsized_block_needs_room_and_a_dim():
    with pytest.raises(PriorSpecError, match="no size N: and no dimension was given"):
        parse_prior("2:uniform(10,11)+gaussian")
    with pytest.raises(PriorSpecError, match="would get 0 dimensions"):
        parse_prior("2:uniform(10,11)+gaussian", dim=2)


def test_bad_prior_files(tmp_path: Path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("kind: [unclosed")
    with pytest.raises(PriorSpecError, match="could not read prior file"):
        load_prior_file(bad_yaml)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(PriorSpecError, match="must hold a spec object"):
        load_prior_file(listed)
    with pytest.raises(PriorSpecError, match="must end in"):
        load_prior_file(tmp_path / "prior.txt")


def test_direct_construction_validates_too():
    assert GaussianPrior(dim=2, std=[1.0, 2.0]).var().tolist() == [1.0, 4.0]
    with pytest.raises(ValueError, match="std must be > 0"):
        GaussianPrior(dim=2, std=-1.0)


def test_array_arguments_are_checked():
    p = prior_from_dict({"kind": "gaussian", "dim": 2})
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        p.cdf(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        p.ppf(np.full((1, 2), 1.5))
    with pytest.raises(ValueError, match="non-negative integer"):
        p.sample(-1)


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


def test_seeds_are_reproducible(prior: Prior):
    a = prior.sample(64, rng=42)
    np.testing.assert_array_equal(a, prior.sample(64, rng=42))
    np.testing.assert_array_equal(a, prior.sample(64, rng=np.random.default_rng(42)))
    assert not np.array_equal(a, prior.sample(64, rng=43))
    gen = np.random.default_rng(0)  # a passed generator advances between calls
    assert not np.array_equal(prior.sample(64, gen), prior.sample(64, gen))
