"""The `sculpt` CLI: output contracts (JSON keys), and one readable line on bad input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from sculptserve import __version__
from sculptserve.cli import cli


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def embeddings(tmp_path):
    rng = np.random.default_rng(0)
    independent = tmp_path / "independent.npy"
    np.save(independent, rng.normal(size=(2000, 4)).astype(np.float32))
    z = rng.normal(size=(2000, 4))
    z[:, 1] = z[:, 0] + 0.05 * rng.normal(size=2000)
    dependent = tmp_path / "dependent.npy"
    np.save(dependent, z)
    return independent, dependent


def test_version_and_help():
    assert run("--version").output.strip() == f"sculpt, version {__version__}"
    helped = run("--help")
    assert helped.exit_code == 0
    for command in ("lps", "mmd", "prior"):
        assert command in helped.output


def test_lps_json_contract(embeddings):
    independent, dependent = embeddings
    low = json.loads(run("lps", independent, "--json").output)
    high = json.loads(run("lps", dependent, "--json").output)
    assert set(low) >= {"lps", "per_dim"}
    assert len(low["per_dim"]) == 4
    assert abs(low["lps"]) < 0.05
    assert high["per_dim"][0] > 0.95 and high["per_dim"][1] > 0.95


def test_lps_table(embeddings):
    result = run("lps", embeddings[1], "--regressor", "linear")
    assert result.exit_code == 0
    assert "LPS =" in result.output and "held-out R^2" in result.output


def test_lps_lgbm_option(embeddings):
    payload = json.loads(run("lps", embeddings[1], "--regressor", "lgbm", "--json").output)
    assert payload["regressor"] == "lgbm" and payload["per_dim"][1] > 0.9


@pytest.mark.parametrize(
    ("array", "phrase"),
    [
        (np.zeros(30), "2-D"),
        (np.random.default_rng(0).normal(size=(30, 1)), "at least 2 dimensions"),
        (np.full((30, 3), np.nan), "NaN or Inf"),
        (np.zeros((0, 3)), "empty"),
        (np.array([{"a": 1}] * 3, dtype=object), "not a plain numeric .npy"),
    ],
)
def test_lps_bad_input_is_one_readable_line(tmp_path, array, phrase):
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    result = run("lps", path)
    assert result.exit_code == 1
    assert phrase in result.output
    assert result.output.startswith("Error: ")
    assert len(result.output.strip().splitlines()) == 1


def test_missing_and_non_npy_files(tmp_path):
    assert run("lps", tmp_path / "nope.npy").exit_code == 2
    text = tmp_path / "text.npy"
    text.write_text("hello")
    result = run("lps", text)
    assert result.exit_code == 1 and "text.npy" in result.output


def test_prior_show_and_sample(tmp_path):
    shown = json.loads(run("prior", "show", "2:gaussian+1:uniform(-5,5)").output)
    assert shown["dim"] == 3
    assert shown["spec"]["kind"] == "hybrid"
    np.testing.assert_allclose(shown["var"], [1.0, 1.0, 100 / 12])
    out = tmp_path / "deep" / "s.npy"
    sampled = run("prior", "sample", "uniform(-5,5)", "--dim", 3, "-n", 500, "--out", out)
    assert sampled.exit_code == 0, sampled.output
    samples = np.load(out)
    assert samples.shape == (500, 3) and samples.dtype == np.float32
    assert samples.min() >= -5 and samples.max() <= 5


def test_prior_bad_spec_is_one_readable_line():
    result = run("prior", "show", "gausian", "--dim", 2)
    assert result.exit_code == 1
    assert "valid kinds" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_mmd_against_prior_and_sample(tmp_path, embeddings):
    independent = embeddings[0]
    same = json.loads(
        run("mmd", independent, "--prior", "gaussian", "--permutations", 100, "--json").output
    )
    assert set(same) >= {"mmd2", "mmd2_pvalue"}
    assert same["mmd2_pvalue"] > 0.01
    shifted = tmp_path / "shifted.npy"
    np.save(shifted, np.load(independent) + 1.0)
    apart = json.loads(
        run("mmd", shifted, "--against", independent, "--permutations", 100, "--json").output
    )
    assert apart["mmd2"] > 0.05
    assert apart["mmd2_pvalue"] == pytest.approx(1 / 101)


def test_mmd_needs_exactly_one_reference(embeddings):
    independent, dependent = embeddings
    assert run("mmd", independent).exit_code == 2
    both = run("mmd", independent, "--prior", "gaussian", "--against", dependent)
    assert both.exit_code == 2 and "exactly one" in both.output


def test_mmd_prior_dimension_mismatch(embeddings):
    result = run("mmd", embeddings[0], "--prior", "8:gaussian")
    assert result.exit_code == 1 and "dimension" in result.output
