"""Supervised disentanglement metrics: known answers on synthetic factors.

Four independent uniform factors with 3, 6, 10 and 16 values (at most 20, so MIG's 20 bins
separate every value of an identity latent). 2,000 train / 1,000 test rows keep the file fast.
"""

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from sculptserve.offline.evaluation import SUPERVISED_KEYS
from sculptserve.stats.disentanglement import (
    as_factors,
    dci,
    dci_from_importance,
    discretize,
    factorvae_score,
    mig,
    mutual_information_nats,
    sap,
    sap_score_matrix,
    supervised_metrics,
)

SIZES = (3, 6, 10, 16)
K = len(SIZES)
N_TRAIN, N_TEST = 2000, 1000
KEYS = set(SUPERVISED_KEYS)  # the eval.json names the evaluation stores these under


def make_factors(n, seed, sizes=SIZES):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(s, size=n) for s in sizes], axis=1)


F_TRAIN, F_TEST = make_factors(N_TRAIN, 1), make_factors(N_TEST, 2)
# Identity representation: latent k is factor k's code (no noise needed: every metric's
# convention handles exact ties, and LightGBM bins each code separately).
Z_ID_TRAIN, Z_ID_TEST = F_TRAIN.astype(float), F_TEST.astype(float)


def noise(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d))


def metrics(z_train, z_test, **kwargs):
    return supervised_metrics(z_train, F_TRAIN, z_test, F_TEST, n_jobs=1, **kwargs)


@pytest.fixture(scope="module")
def identity():
    return metrics(Z_ID_TRAIN, Z_ID_TEST)


@pytest.fixture(scope="module")
def pure_noise():
    return metrics(noise(N_TRAIN, K, 3), noise(N_TEST, K, 4))


# ------------------------------------------------------------------------- known answers


def test_returns_exactly_the_keys_as_plain_floats(identity):
    assert set(identity) == KEYS
    assert all(type(value) is float for value in identity.values())


def test_identity_representation_scores_near_one(identity):
    assert identity["mig"] > 0.9
    assert identity["dci_disentanglement"] > 0.9
    assert identity["dci_completeness"] > 0.9
    assert identity["dci_informativeness"] > 0.95
    assert identity["sap"] > 0.9
    assert identity["factorvae_score"] > 0.95


def test_constant_representation_scores_zero():
    out = metrics(np.zeros((N_TRAIN, K)), np.zeros((N_TEST, K)))
    # One histogram bin (MI exactly 0), SAP's constant latents are not fitted, FactorVAE
    # prunes every latent, and an all-zero importance matrix is defined to score 0.
    assert out["mig"] == 0.0
    assert out["sap"] == 0.0
    assert out["factorvae_score"] == 0.0
    assert out["dci_disentanglement"] == 0.0
    assert out["dci_completeness"] == 0.0
    # With no usable feature a classifier predicts one class: at most the largest test share.
    best_constant = np.mean([np.bincount(F_TEST[:, k]).max() / N_TEST for k in range(K)])
    assert out["dci_informativeness"] <= best_constant + 1e-12


def test_tiny_noise_is_pruned_by_factorvae_and_carries_no_mutual_information():
    z = 1e-9 * noise(N_TRAIN, K, 5)
    assert factorvae_score(z, F_TRAIN) == 0.0  # every std 1e-9 < 0.05
    assert mig(z, F_TRAIN) < 0.05  # bins spread over the noise, independent of the factors


def test_duplicated_latent_removes_one_factors_gap():
    base = mig(Z_ID_TRAIN, F_TRAIN)
    duplicated = mig(np.column_stack([Z_ID_TRAIN, Z_ID_TRAIN[:, 0]]), F_TRAIN)
    # Factor 0's top-two MIs are now equal, so its gap g_0 drops to exactly 0 and MIG drops
    # by g_0 / K. g_0 is 1 minus the plug-in MI bias of an independent latent, about
    # (bins - 1)(values - 1) / (2n) ~ 0.005 nats against H = ln 3: so the drop is 1/K - ~0.001.
    assert base - duplicated == pytest.approx(1 / K, abs=0.01)


def test_rotation_mixes_factors_and_lowers_mig_and_dci_disentanglement(identity):
    standardized_train = (Z_ID_TRAIN - Z_ID_TRAIN.mean(0)) / Z_ID_TRAIN.std(0)
    standardized_test = (Z_ID_TEST - Z_ID_TRAIN.mean(0)) / Z_ID_TRAIN.std(0)
    rotation = np.linalg.qr(np.random.default_rng(5).normal(size=(K, K)))[0]
    z_train, z_test = standardized_train @ rotation, standardized_test @ rotation
    assert mig(z_train, F_TRAIN) < 0.5 * identity["mig"]
    rotated = dci(z_train, F_TRAIN, z_test, F_TEST, n_jobs=1)
    assert rotated["dci_disentanglement"] < 0.5 * identity["dci_disentanglement"]
    # The information is still there, only mixed.
    assert rotated["dci_informativeness"] > 0.5


def test_pure_noise_scores_near_zero_and_factorvae_near_chance(pure_noise):
    assert pure_noise["mig"] < 0.05
    assert pure_noise["dci_disentanglement"] < 0.2
    assert pure_noise["sap"] < 0.05
    # Each latent's majority factor is right for ~1/K of 5,000 eval votes: binomial std
    # sqrt(p(1-p)/5000) ~ 0.006. Train and eval batches come from the same finite pool, so a
    # value group whose rows happen to vary least on some latent favours it in both: a small
    # upward bias (+0.00..0.012 over a few seeds). 0.03 covers both.
    assert pure_noise["factorvae_score"] == pytest.approx(1 / K, abs=0.03)


def test_sap_identity_latent_of_three_class_factor_is_fully_predictable():
    # The reason for chance-adjusted balanced accuracy: raw accuracy would give an
    # uninformative latent 1/3 here and cap the gap near 0.67.
    scores = sap_score_matrix(Z_ID_TRAIN, F_TRAIN, Z_ID_TEST, F_TEST)
    assert scores.shape == (K, K)
    assert np.diag(scores).min() > 0.95
    assert scores[~np.eye(K, dtype=bool)].max() < 0.05


def test_sap_constant_latent_scores_zero_without_fitting():
    z_train = np.column_stack([Z_ID_TRAIN, np.full(N_TRAIN, 7.0)])
    z_test = np.column_stack([Z_ID_TEST, np.full(N_TEST, 7.0)])
    scores = sap_score_matrix(z_train, F_TRAIN, z_test, F_TEST)
    assert np.all(scores[-1] == 0.0)
    assert sap(z_train, F_TRAIN, z_test, F_TEST) == pytest.approx(
        sap(Z_ID_TRAIN, F_TRAIN, Z_ID_TEST, F_TEST), abs=1e-12
    )


# ------------------------------------------------------------------------ building blocks


def test_mutual_information_matches_scikit_learn():
    rng = np.random.default_rng(6)
    a = rng.integers(7, size=500)
    b = (a + rng.integers(3, size=500)) * 5  # dependent, non-contiguous codes
    assert mutual_information_nats(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)


def test_discretize_uses_twenty_equal_width_bins_per_latent():
    z = np.column_stack([np.linspace(0.0, 1.0, 41), np.full(41, 3.0), np.linspace(-5, 95, 41)])
    codes = discretize(z)
    assert codes[:, 0].min() == 0 and codes[:, 0].max() == 19  # the maximum is in bin 19
    np.testing.assert_array_equal(np.bincount(codes[:, 0]), [2] * 19 + [3])
    assert np.unique(codes[:, 1]).size == 1  # constant latent: one bin
    np.testing.assert_array_equal(codes[:, 0], codes[:, 2])  # own min..max per latent


def test_mig_skips_single_valued_factors_and_is_nan_if_all_are():
    with_constant = np.column_stack([F_TRAIN, np.zeros(N_TRAIN, dtype=int)])
    assert mig(Z_ID_TRAIN, with_constant) == pytest.approx(mig(Z_ID_TRAIN, F_TRAIN), abs=1e-12)
    assert np.isnan(mig(Z_ID_TRAIN, np.zeros((N_TRAIN, 2), dtype=int)))


def test_dci_from_hand_made_importance_matrices():
    accuracy = np.array([1.0, 0.5])
    # Each used latent explains one factor; the unused latent (all-zero row) has no weight.
    out = dci_from_importance(np.array([[1.0, 0.0], [0.0, 3.0], [0.0, 0.0]]), accuracy)
    assert out["dci_disentanglement"] == pytest.approx(1.0)
    assert out["dci_completeness"] == pytest.approx(1.0)
    assert out["dci_informativeness"] == pytest.approx(0.75)
    # One latent explains both factors equally: row entropy 1 (base K = 2) gives D = 0, while
    # each factor is captured by that single latent: C = 1.
    out = dci_from_importance(np.array([[2.0, 2.0], [0.0, 0.0]]), accuracy)
    assert out["dci_disentanglement"] == pytest.approx(0.0)
    assert out["dci_completeness"] == pytest.approx(1.0)


def test_dci_single_factor_or_single_latent_is_defined_as_one():
    single_factor = dci_from_importance(np.array([[1.0], [3.0]]), np.array([1.0]))
    assert single_factor["dci_disentanglement"] == 1.0
    assert single_factor["dci_completeness"] == pytest.approx(1 - 0.8112781244591328)
    single_latent = dci_from_importance(np.array([[1.0, 1.0]]), np.array([1.0, 1.0]))
    assert single_latent["dci_completeness"] == 1.0
    assert single_latent["dci_disentanglement"] == pytest.approx(0.0)


def test_factorvae_skips_single_valued_factors_and_is_nan_if_all_are():
    z = noise(N_TRAIN, 3, 7)
    # With one varying factor every vote names it: accuracy 1 whatever the latents.
    one_varying = np.column_stack([F_TRAIN[:, 0], np.zeros(N_TRAIN, dtype=int)])
    assert factorvae_score(z, one_varying, n_train_votes=500, n_eval_votes=500) == 1.0
    assert np.isnan(factorvae_score(z, np.zeros((N_TRAIN, 2), dtype=int)))


def test_factor_codes_accept_integer_valued_floats_and_any_integer_dtype():
    expected = mig(Z_ID_TRAIN, F_TRAIN)
    assert mig(Z_ID_TRAIN, F_TRAIN.astype(np.float32)) == expected
    assert mig(Z_ID_TRAIN, F_TRAIN.astype(np.uint8)) == expected
    assert as_factors(F_TRAIN.astype(np.int8), N_TRAIN).dtype == np.int64


# -------------------------------------------------------------------- validation, seeds


def _with_nan(z):
    z = z.copy()
    z[3, 1] = np.nan
    return z


def _negative(f):
    f = f.copy()
    f[5, 2] = -1
    return f


BAD_INPUTS = {
    "nan latents": (_with_nan(Z_ID_TRAIN), F_TRAIN, "NaN"),
    "mismatched rows": (Z_ID_TRAIN[:-1], F_TRAIN, "rows"),
    "negative code": (Z_ID_TRAIN, _negative(F_TRAIN), "non-negative"),
    "1-D latents": (Z_ID_TRAIN[:, 0], F_TRAIN, "2-D"),
    "1-D factors": (Z_ID_TRAIN, F_TRAIN[:, 0], "2-D"),
    "fractional code": (Z_ID_TRAIN, F_TRAIN + 0.5, "integer"),
    "string codes": (Z_ID_TRAIN, F_TRAIN.astype(str), "integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error_with_a_message(case):
    z, f, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        mig(z, f)
    with pytest.raises(ValueError, match=message):
        supervised_metrics(z, f, Z_ID_TEST, F_TEST)


def test_train_and_test_must_agree_on_dims_and_factors():
    with pytest.raises(ValueError, match="dims"):
        sap(Z_ID_TRAIN, F_TRAIN, Z_ID_TEST[:, :2], F_TEST)
    with pytest.raises(ValueError, match="columns"):
        supervised_metrics(Z_ID_TRAIN, F_TRAIN, Z_ID_TEST, F_TEST[:, :2])


def test_same_seed_gives_same_numbers():
    n_train, n_test = 600, 300
    z_train, z_test = noise(n_train, K, 8), noise(n_test, K, 9)
    f_train, f_test = F_TRAIN[:n_train], F_TEST[:n_test]

    def run(seed):
        return supervised_metrics(z_train, f_train, z_test, f_test, seed=seed, n_jobs=1)

    assert run(3) == run(3)
    assert factorvae_score(z_train, f_train, seed=3) != factorvae_score(z_train, f_train, seed=4)
