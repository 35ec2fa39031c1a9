"""Tests for sculptserve.training.objectives: registry and parameter errors, and the value of each
regularizer against closed forms, sculptserve.stats.mmd, and known statistical behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sculptserve.stats.mmd import mmd2  # noqa: E402
from sculptserve.stats.priors import parse_prior  # noqa: E402
from sculptserve.training.objectives import (  # noqa: E402
    OBJECTIVES,
    RegularizerInput,
    build_objective,
)

NAMES = ["mmd", "ae", "vae", "beta-vae", "beta-tcvae"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_input(
    mean: torch.Tensor,
    logvar: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    n_features: int = 1,
    dataset_size: int = 1000,
) -> RegularizerInput:
    z = mean if z is None else z
    return RegularizerInput(
        z=z,
        mean=mean,
        logvar=logvar,
        z_global=z,
        prior_samples=prior,
        n_features=n_features,
        dataset_size=dataset_size,
    )


def gaussian_batch(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A VAE-like batch: means, log variances and one reparameterized sample each."""
    g = torch.Generator().manual_seed(seed)
    mean = 0.8 * torch.randn(n, d, generator=g)
    logvar = 0.3 * torch.randn(n, d, generator=g) - 0.5
    z = mean + torch.exp(0.5 * logvar) * torch.randn(n, d, generator=g)
    return mean, logvar, z


def prior_batch(n: int, d: int, seed: int, spec: str = "gaussian") -> torch.Tensor:
    return torch.tensor(parse_prior(spec, d).sample(n, seed), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Registry and parameters
# --------------------------------------------------------------------------------------------


def test_registry_lists_the_five_objectives_with_their_needs():
    assert sorted(OBJECTIVES) == sorted(NAMES)
    assert all(cls.name == name for name, cls in OBJECTIVES.items())
    stochastic = {name for name, cls in OBJECTIVES.items() if cls.stochastic}
    assert stochastic == {"vae", "beta-vae", "beta-tcvae"}
    assert {name for name, cls in OBJECTIVES.items() if cls.needs_prior} == {"mmd"}


def test_unknown_objective_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown objective 'wae'") as err:
        build_objective("wae")
    assert all(name in str(err.value) for name in NAMES)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("mmd", {"lambda": -0.1}, "lambda"),
        ("mmd", {"lambda_": float("nan")}, "lambda"),
        ("mmd", {"lambda": "0.3"}, "lambda"),
        ("mmd", {"lambda": True}, "lambda"),
        ("mmd", {"kernel": "laplace"}, "kernel 'laplace'.*rbf, imq"),
        ("mmd", {"estimator": "fast"}, "estimator 'fast'.*biased"),
        ("mmd", {"lam": 1.0}, "'lam'.*known parameters: lambda, kernel, estimator"),
        ("mmd", {"lambda": 1.0, "lambda_": 2.0}, "twice"),
        ("ae", {"beta": 1.0}, "'beta'.*objective 'ae'"),
        ("vae", {"beta": 2.0}, "'beta'.*objective 'vae'"),
        ("beta-vae", {"beta": -1.0}, "beta"),
        ("beta-vae", {"beta": math.inf}, "beta"),
        ("beta-tcvae", {"beta": -4.0}, "beta"),
        ("beta-tcvae", {"gamma": -1.0}, "gamma"),
    ],
)
def test_invalid_parameters_are_rejected(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_objective(name, **params)


def test_defaults_follow_the_papers():
    mmd = build_objective("mmd")
    assert (mmd.lambda_, mmd.kernel, mmd.estimator) == (0.3, "rbf", "biased")
    assert build_objective("beta-vae").beta == 4.0
    tc = build_objective("beta-tcvae")
    assert (tc.alpha, tc.beta, tc.gamma) == (1.0, 4.0, 1.0)
    # the CLI/JSON spelling and the Python one mean the same
    assert build_objective("mmd", **{"lambda": 2}) == build_objective("mmd", lambda_=2.0)


@pytest.mark.parametrize(
    "name, params",
    [
        ("mmd", {"lambda": 1.5, "kernel": "imq", "estimator": "unbiased"}),
        ("ae", {}),
        ("vae", {}),
        ("beta-vae", {"beta": 2.0}),
        ("beta-tcvae", {"beta": 6.0, "alpha": 0.5}),
    ],
)
def test_to_dict_round_trips_through_json(name, params):
    objective = build_objective(name, **params)
    data = json.loads(json.dumps(objective.to_dict()))
    assert data["name"] == name
    assert all(data[k] == v for k, v in params.items())
    assert build_objective(**data) == objective


def test_kl_family_supports_only_the_standard_normal_prior():
    vae = build_objective("vae")
    assert vae.supports_prior(parse_prior("gaussian", 3))
    assert not vae.supports_prior(parse_prior("gaussian(0,2)", 3))
    assert not vae.supports_prior(parse_prior("uniform(-1,1)", 3))
    assert build_objective("mmd").supports_prior(parse_prior("uniform(-5,5)", 3))


@pytest.mark.parametrize("name", ["vae", "beta-vae", "beta-tcvae"])
def test_kl_family_needs_a_stochastic_encoder(name):
    with pytest.raises(ValueError, match="stochastic"):
        build_objective(name).regularizer(make_input(torch.zeros(4, 2)))


# --------------------------------------------------------------------------------------------
# ae and the VAE family
# --------------------------------------------------------------------------------------------


def test_ae_regularizer_is_exactly_zero():
    value, parts = build_objective("ae").regularizer(make_input(torch.randn(8, 3)))
    assert value.shape == ()
    assert value.item() == 0.0
    assert parts == {}


def test_vae_kl_matches_the_closed_form():
    mean = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])
    # 0.5 * sum(mu^2 + s^2 - 1 - log s^2) per sample, then the batch mean
    per_sample = [
        0.5 * ((1 + 1 - 1 - 0) + (4 + 4 - 1 - math.log(4))),
        0.5 * ((0 + 0.25 - 1 - math.log(0.25)) + (1 + 1 - 1 - 0)),
    ]
    expected = sum(per_sample) / 2
    value, parts = build_objective("vae").regularizer(make_input(mean, logvar, n_features=784))
    assert parts["kl"].item() == pytest.approx(expected, rel=1e-6)
    assert value.item() == pytest.approx(expected / 784, rel=1e-6)


def test_vae_kl_is_zero_at_the_prior():
    zeros = torch.zeros(5, 3)
    value, _ = build_objective("vae").regularizer(make_input(zeros, zeros.clone()))
    assert value.item() == 0.0


def test_beta_vae_is_beta_times_vae():
    mean, logvar, z = gaussian_batch(64, 4, seed=1)
    inp = make_input(mean, logvar, z, n_features=64)
    vae, _ = build_objective("vae").regularizer(inp)
    beta_vae, parts = build_objective("beta-vae", beta=2.5).regularizer(inp)
    torch.testing.assert_close(beta_vae, 2.5 * vae)
    torch.testing.assert_close(parts["kl"], 64 * vae)


def test_beta_tcvae_with_unit_weights_estimates_the_kl():
    mean, logvar, z = gaussian_batch(2048, 4, seed=2)
    inp = make_input(mean, logvar, z, n_features=10, dataset_size=60_000)
    value, parts = build_objective("beta-tcvae", beta=1.0).regularizer(inp)
    closed_form = build_objective("vae").regularizer(inp)[1]["kl"]
    # MI + TC + dim-wise KL telescope to E[log q(z|x) - log p(z)]: exactly the one-sample
    # Monte Carlo KL, an unbiased estimate of the closed form
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(0.0, 1.0)
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).sum(dim=1).mean()
    torch.testing.assert_close(parts["kl"], monte_carlo, rtol=1e-4, atol=1e-4)
    assert parts["kl"].item() == pytest.approx(closed_form.item(), rel=0.1)
    assert value.item() == pytest.approx(parts["kl"].item() / 10, rel=1e-6)


def test_beta_tcvae_weights_only_the_total_correlation():
    mean, logvar, z = gaussian_batch(256, 3, seed=3)
    inp = make_input(mean, logvar, z, n_features=5, dataset_size=5000)
    one, parts = build_objective("beta-tcvae", beta=1.0).regularizer(inp)
    four, _ = build_objective("beta-tcvae", beta=4.0).regularizer(inp)
    torch.testing.assert_close(four - one, 3.0 * parts["tc"] / 5, rtol=1e-4, atol=1e-5)


def test_beta_tcvae_total_correlation_is_larger_for_correlated_latents():
    n, d = 512, 4
    g = torch.Generator().manual_seed(4)
    logvar = torch.full((n, d), -4.0)  # sharp posteriors: the means carry the structure
    shared = torch.randn(n, 1, generator=g).expand(n, d)  # every dimension the same factor
    independent = torch.randn(n, d, generator=g)
    tcvae = build_objective("beta-tcvae")
    tc = {}
    for label, mean in (("correlated", shared), ("independent", independent)):
        z = mean + torch.exp(0.5 * logvar) * torch.randn(n, d, generator=g)
        tc[label] = tcvae.regularizer(make_input(mean, logvar, z, dataset_size=n))[1]["tc"].item()
    assert tc["correlated"] > tc["independent"] + 2.0, tc


# --------------------------------------------------------------------------------------------
# mmd
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_is_small_on_prior_samples_and_large_when_shifted(kernel):
    objective = build_objective("mmd", kernel=kernel, **{"lambda": 1.0})
    prior = prior_batch(512, 4, seed=0)
    same = objective.regularizer(make_input(prior, prior=prior))[0].item()
    fresh = objective.regularizer(make_input(prior_batch(512, 4, seed=1), prior=prior))[0].item()
    shifted = objective.regularizer(make_input(prior + 1.0, prior=prior))[0].item()
    assert abs(same) < 1e-6
    assert abs(fresh) < 0.03
    assert shifted > 10 * abs(fresh) and shifted > 0.3


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
def test_mmd_equals_lambda_times_sculptserve_mmd2(kernel, estimator):
    z = torch.randn(128, 3) * 1.5 + 0.2
    prior = prior_batch(128, 3, seed=5, spec="uniform(-2,2)")
    objective = build_objective("mmd", lambda_=0.7, kernel=kernel, estimator=estimator)
    value, parts = objective.regularizer(make_input(z, prior=prior))
    raw = mmd2(z, prior, kernel=kernel, estimator=estimator)
    assert torch.equal(parts["mmd2"], raw)
    assert torch.equal(value, 0.7 * raw)


def test_mmd_uses_the_global_batch():
    local = torch.randn(8, 2)
    z_global = torch.randn(64, 2) + 3.0
    prior = prior_batch(64, 2, seed=6)
    inp = RegularizerInput(local, local, None, z_global, prior, n_features=1, dataset_size=100)
    value, _ = build_objective("mmd").regularizer(inp)
    assert torch.equal(value, 0.3 * mmd2(z_global, prior, estimator="biased"))


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_gradient_reaches_the_latents_and_pulls_them_to_the_prior(kernel):
    z = (torch.randn(256, 3) + 2.0).requires_grad_(True)
    prior = prior_batch(256, 3, seed=7)
    value, _ = build_objective("mmd", kernel=kernel).regularizer(make_input(z, prior=prior))
    value.backward()
    assert z.grad is not None
    assert float(z.grad.abs().sum()) > 0.0
    # descending the gradient moves the batch mean towards the prior's mean (0)
    mean_step = -z.grad.sum(dim=0)
    assert float(mean_step @ z.detach().mean(dim=0)) < 0.0


def test_mmd_without_prior_samples_says_what_is_missing():
    with pytest.raises(ValueError, match="prior samples"):
        build_objective("mmd").regularizer(make_input(torch.randn(4, 2)))


@pytest.mark.parametrize("name", ["mmd", "vae", "beta-tcvae"])
def test_diverged_latents_give_nan_not_an_exception(name):
    # the trainer's non-finite-loss check must see the divergence, whatever the objective
    mean, logvar, z = gaussian_batch(16, 2, seed=10)
    mean, z = mean.clone(), z.clone()
    mean[3, 1] = z[3, 1] = math.nan  # a diverged encoder's mean, hence its sample
    value, _ = build_objective(name).regularizer(
        make_input(mean, logvar, z, prior=prior_batch(16, 2, seed=11))
    )
    assert math.isnan(value.item())


def test_mmd_rejects_bad_prior_samples():
    prior = prior_batch(16, 2, seed=12)
    with pytest.raises(ValueError, match="NaN or Inf"):
        build_objective("mmd").regularizer(make_input(torch.randn(16, 2), prior=prior * math.inf))
    with pytest.raises(ValueError, match="same number of features"):
        build_objective("mmd").regularizer(make_input(torch.randn(16, 3), prior=prior))


def test_regularizers_run_in_float32_under_bf16_autocast():
    mean, logvar, z = gaussian_batch(128, 4, seed=8)
    prior = prior_batch(128, 4, seed=9)
    for name in ["mmd", "vae", "beta-tcvae"]:
        objective = build_objective(name)
        reference, _ = objective.regularizer(make_input(mean, logvar, z, prior=prior))
        low = [t.to(torch.bfloat16) for t in (mean, logvar, z, prior)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value, _ = objective.regularizer(make_input(*low[:3], prior=low[3]))
        assert value.dtype == torch.float32
        # only the inputs' rounding to bf16 separates the two
        assert np.isclose(value.item(), reference.item(), rtol=0.05, atol=1e-3), name


# --------------------------------------------------------------------------------------------
# mmd: explicit independence and 1-D marginal terms
# --------------------------------------------------------------------------------------------


def test_permute_columns_keeps_every_column_and_cuts_the_links():
    from sculptserve.training.objectives import permute_columns

    z = torch.arange(40.0).reshape(10, 4)
    shuffled = permute_columns(z, seed=0, step=3)
    for j in range(4):  # every column holds the same values, reordered
        assert torch.equal(torch.sort(shuffled[:, j]).values, z[:, j])
    assert not torch.equal(shuffled, z)
    assert torch.equal(shuffled, permute_columns(z, seed=0, step=3))  # seeded by (seed, step)
    assert not torch.equal(shuffled, permute_columns(z, seed=0, step=4))


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_independence_term_is_zero_for_independent_columns_and_positive_for_dependent(kernel):
    g = torch.Generator().manual_seed(20)
    independent = torch.randn(512, 2, generator=g)
    z1 = torch.randn(512, 1, generator=g)
    dependent = torch.cat([z1, z1.square() - 1.0], dim=1)  # uncorrelated, fully dependent
    prior = prior_batch(512, 2, seed=21)
    objective = build_objective("mmd", kernel=kernel, independence=1.0)
    _, parts_ind = objective.regularizer(make_input(independent, prior=prior))
    _, parts_dep = objective.regularizer(make_input(dependent, prior=prior))
    assert abs(parts_ind["mmd2_independence"].item()) < 0.01
    assert parts_dep["mmd2_independence"].item() > 10 * abs(parts_ind["mmd2_independence"].item())
    assert parts_dep["mmd2_independence"].item() > 0.02


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("spec", ["gaussian", "uniform(-2,2)", "laplace(0,1)"])
def test_marginal_term_is_about_zero_on_prior_samples_and_sees_a_wrong_marginal(kernel, spec):
    prior = prior_batch(512, 3, seed=22, spec=spec)
    fresh = prior_batch(512, 3, seed=23, spec=spec)
    # unbiased: the training default (biased) sits O(1/n) above 0 on equal distributions
    objective = build_objective("mmd", kernel=kernel, marginal=1.0, estimator="unbiased")
    _, same = objective.regularizer(make_input(fresh, prior=prior))
    wrong = fresh.clone()
    wrong[:, 1] = wrong[:, 1] * 2.0  # one marginal twice too wide
    _, off = objective.regularizer(make_input(wrong, prior=prior))
    assert abs(same["mmd2_marginal"].item()) < 0.006
    assert off["mmd2_marginal"].item() > 5 * max(abs(same["mmd2_marginal"].item()), 1e-3)


def test_new_terms_weight_into_the_loss_relative_to_lambda_and_default_to_off():
    z = torch.randn(128, 3) * 1.3
    prior = prior_batch(256, 3, seed=24)
    plain = build_objective("mmd", lambda_=0.5, kernel="imq")
    full = build_objective("mmd", lambda_=0.5, kernel="imq", independence=2.0, marginal=3.0)
    value_plain, parts_plain = plain.regularizer(make_input(z, prior=prior))
    value, parts = full.regularizer(make_input(z, prior=prior))
    assert set(parts_plain) == {"mmd2"}  # off by default: the paper's objective, unchanged
    assert torch.equal(value_plain, 0.5 * mmd2(z, prior, kernel="imq", estimator="biased"))
    expected = 0.5 * (
        parts["mmd2"] + 2.0 * parts["mmd2_independence"] + 3.0 * parts["mmd2_marginal"]
    )
    assert torch.allclose(value, expected, rtol=1e-6)


def test_prior_multiple_sets_the_prior_rows_the_trainer_draws():
    assert build_objective("mmd").prior_rows(64) == 64
    assert build_objective("mmd", prior_multiple=4).prior_rows(64) == 256
    assert build_objective("ae").prior_rows(64) == 64
    with pytest.raises(ValueError, match="prior_multiple must be an integer >= 1"):
        build_objective("mmd", prior_multiple=0)
    with pytest.raises(ValueError, match="independence must be a finite number >= 0"):
        build_objective("mmd", independence=-1.0)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_independence_and_marginal_gradients_reach_the_latents(kernel):
    g = torch.Generator().manual_seed(25)
    z1 = torch.randn(256, 1, generator=g)
    z = torch.cat([z1, z1.square() - 1.0], dim=1).requires_grad_(True)
    prior = prior_batch(256, 2, seed=26)
    for weights in ({"independence": 1.0}, {"marginal": 1.0}):
        objective = build_objective("mmd", kernel=kernel, lambda_=1.0, **weights)
        joint_only = build_objective("mmd", kernel=kernel, lambda_=1.0)
        grad_full = torch.autograd.grad(objective.regularizer(make_input(z, prior=prior))[0], z)[0]
        grad_joint = torch.autograd.grad(joint_only.regularizer(make_input(z, prior=prior))[0], z)[
            0
        ]
        assert torch.isfinite(grad_full).all()
        # the extra term moves the gradient: it is not cut from the graph
        assert float((grad_full - grad_joint).abs().sum()) > 1e-4
