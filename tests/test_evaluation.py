"""`sculpt eval` / `sculpt embed` and the evaluation core: known answers on synthetic
embeddings, and every kind of target (run dir, bundle, bare .npy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sculptserve.cli import cli
from sculptserve.export.writer import ExportOptions, export_run
from sculptserve.offline.embedding import model_dataset, sample_rows
from sculptserve.offline.evaluation import (
    EVAL_KEYS,
    SUPERVISED_KEYS,
    EvalConfig,
    EvalInputs,
    evaluate,
)
from sculptserve.offline.sources import EvalRequest, default_output, detect_kind, load_eval_inputs
from sculptserve.serving.runtime import EmbeddingRuntime
from sculptserve.stats.priors import parse_prior
from sculptserve.stats.scores import nmse_db
from sculptserve.training.checkpoint import load_trained_model
from sculptserve.training.trainer import encode_decode

# Small but statistically meaningful sizes, so the file runs in well under a minute.
SMALL = EvalConfig(
    regressors=("linear", "lgbm"),
    lps_samples=3000,
    mmd_samples=500,
    n_permutations=100,
    n_train=1500,
    n_test=600,
)


def gaussian_inputs(z: np.ndarray, **kwargs) -> EvalInputs:
    return EvalInputs(
        embeddings=z, prior=parse_prior("gaussian", dim=z.shape[1]), source={}, **kwargs
    )


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_independent_gaussian_latents_score_as_independent_and_on_prior():
    z = np.random.default_rng(0).normal(size=(3000, 5))
    result = evaluate(gaussian_inputs(z), SMALL)
    assert abs(result["lps_linear"]) < 0.02
    # Held-out R^2 of pure noise: 600 test rows give a spread of ~0.025 on the mean, and the
    # trees overfit a little (negative bias); 0.06 is still far below any real dependence.
    assert abs(result["lps_lgbm"]) < 0.06
    assert result["total_correlation"] < 0.01
    assert result["mmd2"] < 0.01
    assert result["mmd2_pvalue"] > 0.01
    assert result["ks_max"] < 0.05  # 3000 rows: the 1% critical value is ~0.03
    assert result["nmse_db"] is None and result["lps_mlp"] is None
    assert all(result[key] is None for key in SUPERVISED_KEYS)
    assert any("no ground-truth factors" in note for note in result["notes"])
    assert set(EVAL_KEYS) <= set(result)
    json.dumps(result, allow_nan=False)  # eval.json is strict JSON


def test_rotation_of_independent_gaussian_latents_keeps_lps_near_zero():
    # Rotations preserve N(0, I), so its dimensions stay independent: an MMD-sculpted gaussian
    # latent has no preferred axes to lose. (A KL-VAE's aggregate posterior is not N(0, I),
    # so a rotation mixes its dependent dimensions further.)
    z = np.random.default_rng(1).normal(size=(3000, 6))
    rotated = z @ random_rotation(6, seed=2)
    result = evaluate(gaussian_inputs(rotated), SMALL)
    assert abs(result["lps_linear"]) < 0.02
    assert abs(result["lps_lgbm"]) < 0.06  # see the tolerance note above


def test_rotation_of_independent_non_gaussian_latents_raises_lps():
    # The contrast that makes the previous test meaningful: skewed marginals are independent
    # only along their axes. Rotated 45 degrees, u = (a - b)/sqrt2 and v = (a + b)/sqrt2 of
    # iid exponentials are uncorrelated, but E[v | u] grows with |u|: predictable, non-linearly.
    # (A symmetric marginal such as a uniform would hide it from R^2: the rotated square's
    # dependence is in the conditional variance only, which LPS cannot see.)
    z = np.random.default_rng(3).exponential(size=(3000, 2)) - 1.0
    theta = np.pi / 4
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    unrotated = evaluate(gaussian_inputs(z), SMALL)
    rotated = evaluate(gaussian_inputs(z @ rotation), SMALL)
    assert abs(unrotated["lps_lgbm"]) < 0.06
    # Exactly: R^2(v | u) = Var|a - b| / Var(a + b) = 1/2 and R^2(u | v) = 0 (symmetry), so
    # LPS = 0.25; the regularized trees recover most of it.
    assert 0.12 < rotated["lps_lgbm"] < 0.3
    assert abs(rotated["lps_linear"]) < 0.02  # still uncorrelated: only the lgbm sees it


def test_correlated_latents_are_flagged():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(3000, 1))
    z = np.hstack([a, a + 0.3 * rng.normal(size=(3000, 1)), rng.normal(size=(3000, 2))])
    result = evaluate(gaussian_inputs(z), SMALL)
    # Two of four dims share a signal with R^2 = 1 / 1.09 each: LPS ~ 0.46.
    assert result["lps_linear"] == pytest.approx(0.46, abs=0.03)
    assert result["total_correlation"] > 0.5
    assert result["mmd2_pvalue"] < 0.05


def test_a_collapsed_latent_nulls_only_the_metrics_it_breaks():
    z = np.random.default_rng(5).normal(size=(2000, 4))
    z[:, 2] = 0.25  # posterior collapse: a constant dimension
    result = evaluate(gaussian_inputs(z), SMALL)
    assert result["lps_linear"] is None and result["total_correlation"] is None
    assert result["ks_max"] > 0.3  # the constant dim is far from N(0, 1)
    assert result["mmd2"] > 0.05
    assert any("lps_linear" in note and "constant" in note for note in result["notes"])


def test_supervised_metrics_on_identity_factors():
    rng = np.random.default_rng(6)
    factors = np.stack([rng.integers(0, k, 2100) for k in (3, 6, 10)], axis=1)
    z = (factors - factors.mean(0)) / factors.std(0) + 0.01 * rng.normal(size=factors.shape)
    result = evaluate(gaussian_inputs(z, factors=factors, factor_names=("a", "b", "c")), SMALL)
    assert result["mig"] > 0.9
    assert result["dci_disentanglement"] > 0.9
    assert result["factorvae_score"] > 0.95
    assert result["factor_names"] == ["a", "b", "c"]


def test_mismatched_inputs_are_errors():
    z = np.random.default_rng(7).normal(size=(100, 3))
    with pytest.raises(ValueError, match="factors have 50 rows"):
        evaluate(gaussian_inputs(z, factors=np.zeros((50, 1), dtype=int)), SMALL)
    with pytest.raises(ValueError, match="prior has 2"):
        evaluate(EvalInputs(z, parse_prior("gaussian", dim=2), {}), SMALL)


# -- targets ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_run(tiny_shapes_run) -> Path:
    return tiny_shapes_run


@pytest.fixture(scope="module")
def shapes_bundle(shapes_run, tmp_path_factory) -> Path:
    options = ExportOptions(n_reference=128, window=32, n_resamples=20, expected_run_length=None)
    return export_run(shapes_run, tmp_path_factory.mktemp("bundles") / "bundle", options)


TINY = EvalConfig(
    regressors=("linear",), lps_samples=400, mmd_samples=200, n_permutations=20, n_train=300,
    n_test=100,
)  # fmt: skip


def test_run_and_its_bundle_give_the_same_numbers(shapes_run, shapes_bundle):
    run_kind, run_inputs = load_eval_inputs(EvalRequest(str(shapes_run), TINY))
    bundle_kind, bundle_inputs = load_eval_inputs(EvalRequest(str(shapes_bundle), TINY))
    assert (run_kind, bundle_kind) == ("run", "bundle")
    # Same held-out rows, torch vs ONNX Runtime: equal to the export's parity tolerance.
    np.testing.assert_allclose(run_inputs.embeddings, bundle_inputs.embeddings, atol=1e-4)
    assert run_inputs.nmse_db == pytest.approx(bundle_inputs.nmse_db, abs=1e-3)
    np.testing.assert_array_equal(run_inputs.factors, bundle_inputs.factors)
    assert run_inputs.factors.shape == (400, 5)  # shapes' five generative factors
    # The streamed NMSE equals the trainer's own on the same rows, all at once.
    held_out = model_dataset(json.loads((shapes_run / "data.json").read_text()))
    rows = sample_rows(len(held_out), TINY.n_rows, TINY.seed)
    model = load_trained_model(shapes_run)
    x, _, recon = encode_decode(model, held_out, rows, torch.device("cpu"))
    assert run_inputs.nmse_db == pytest.approx(nmse_db(x, recon), abs=1e-6)
    result = evaluate(bundle_inputs, TINY)
    assert result["n"] == 400 and result["latent_dim"] == 4
    assert result["nmse_db"] == pytest.approx(bundle_inputs.nmse_db)
    assert all(result[key] is not None for key in ("mig", "sap", "dci_informativeness"))


def test_cli_eval_of_a_bundle_writes_eval_json_beside_it(shapes_bundle):
    args = ["eval", str(shapes_bundle), "--regressor", "linear", "--n-train", "300"]
    args += ["--n-test", "100", "--lps-samples", "400", "--mmd-samples", "200"]
    args += ["--permutations", "20"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    written = shapes_bundle.with_name("bundle.eval.json")
    payload = json.loads(written.read_text())
    assert payload["source"]["kind"] == "bundle"
    assert payload["n"] == 400 and payload["lps_lgbm"] is None
    assert written.with_suffix(".md").read_text().startswith("# Evaluation of")


def test_cli_eval_of_an_npy_with_factors(tmp_path):
    rng = np.random.default_rng(8)
    factors = np.stack([rng.integers(0, k, 1200) for k in (4, 8)], axis=1)
    z = factors + 0.01 * rng.normal(size=factors.shape)
    np.save(tmp_path / "emb.npy", z.astype(np.float32))
    np.save(tmp_path / "factors.npy", factors)
    args = ["eval", str(tmp_path / "emb.npy"), "--factors", str(tmp_path / "factors.npy")]
    args += ["--regressor", "linear", "--n-train", "800", "--n-test", "400", "--json"]
    args += ["--permutations", "20", "--mmd-samples", "500", "--prior", "uniform(0,8)"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["mig"] > 0.9 and payload["sap"] > 0.5
    assert payload["nmse_db"] is None
    assert json.loads((tmp_path / "emb.eval.json").read_text())["mig"] == payload["mig"]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda p: ["eval", str(p / "missing")], "no such file"),
        (lambda p: ["eval", str(p / "emb.npy"), "--data", "shapes"], "--data is for runs"),
        (lambda p: ["eval", str(p / "emb.npy"), "--factors", str(p / "bad.npy")], "factors"),
        (lambda p: ["eval", str(p)], "neither a run dir"),
    ],
)
def test_cli_eval_errors_are_one_line(tmp_path, make_args, message):
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(50, 3)))
    np.save(tmp_path / "bad.npy", np.zeros((7, 2)))  # 7 rows for 50 embeddings
    result = CliRunner().invoke(cli, make_args(tmp_path))
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_detect_kind_and_default_outputs(shapes_run, shapes_bundle, tmp_path):
    assert detect_kind(str(shapes_run)) == "run"
    assert default_output(str(shapes_run), "run") == shapes_run / "eval.json"
    assert default_output(str(tmp_path / "z.npy"), "embeddings") == tmp_path / "z.eval.json"
    assert default_output("sculpt-toy:v1", "bundle") == Path("sculpt-toy-v1.eval.json")


def test_cli_embed_matches_the_runtime(shapes_bundle, tmp_path):
    from sculptserve.bundle.load import load_bundle
    from sculptserve.training.data import load_dataset

    out = tmp_path / "emb.npy"
    result = CliRunner().invoke(cli, ["embed", str(shapes_bundle), "digits", "--out", str(out)])
    assert result.exit_code == 1 and "shape" in result.output  # 8x8 digits are not 64x64 shapes
    np.save(tmp_path / "images.npy", np.random.default_rng(0).random((20, 1, 64, 64)))
    args = ["embed", str(shapes_bundle), str(tmp_path / "images.npy"), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--encoding", "uint8"])
    assert result.exit_code == 0, result.output
    codes = np.load(out)
    assert codes.shape == (20, 4) and codes.dtype == np.uint8
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    runtime = EmbeddingRuntime(load_bundle(shapes_bundle))
    x = load_dataset(str(tmp_path / "images.npy"), split="all").get_batch(np.arange(20))
    np.testing.assert_allclose(np.load(out), runtime.encode(x), atol=1e-6)


def test_a_single_factor_leaves_out_the_scores_it_makes_trivial():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, size=(1500, 1))
    z = np.hstack([labels + 0.1 * rng.normal(size=(1500, 1)), rng.normal(size=(1500, 2))])
    result = evaluate(gaussian_inputs(z, factors=labels, factor_names=("label",)), SMALL)
    assert result["dci_disentanglement"] is None and result["factorvae_score"] is None
    assert result["mig"] > 0.8 and result["dci_informativeness"] > 0.95
    assert any("trivially 1 with one factor" in note for note in result["notes"])
