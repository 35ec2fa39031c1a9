"""Tests for sculptserve.training.report: the end-of-training PNG report (numpy only, no torch)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from scipy import stats

from sculptserve.stats.priors import Prior, parse_prior
from sculptserve.training.report import (
    MAX_FEATURES,
    REPORT_FILES,
    latent_ks,
    marginals_figure,
    pairs_figure,
    save_figure,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def linear_decoder(d: int, shape: tuple[int, ...], seed: int = 0) -> Callable:
    """A fake decoder: fixed random linear map + sigmoid, reshaped to ``shape`` per example."""
    weights = np.random.default_rng(seed).normal(size=(d, int(np.prod(shape)))) / np.sqrt(d)

    def decode(z: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-np.asarray(z) @ weights))).reshape(len(z), *shape)

    return decode


def make_case(prior: Prior, shape: tuple[int, ...], n: int = 1000, n_examples: int = 12):
    """Latents drawn from the prior, plus held-out examples and noisy reconstructions."""
    rng = np.random.default_rng(1)
    decode = linear_decoder(prior.dim, shape)
    latents = prior.sample(n, rng)
    inputs = decode(prior.sample(n_examples, rng))
    recon = np.clip(inputs + rng.normal(0.0, 0.05, inputs.shape), 0.0, 1.0)
    return {"latents": latents, "prior": prior, "decode": decode, "inputs": inputs,
            "reconstructions": recon}  # fmt: skip


def read_png(path: Path) -> np.ndarray:
    """Check the PNG signature and decode the file; return the (H, W, channels) pixels."""
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    return pixels


def check_report(files: list[Path], out: Path) -> dict[str, np.ndarray]:
    assert files == [out / name for name in REPORT_FILES]
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # no temp files left
    pixels = {}
    for path in files:
        img = read_png(path)
        h, w = img.shape[:2]
        # small (dpi 90) but big enough to read: a few hundred to ~1,400 pixels a side
        assert 150 <= h <= 1400 and 200 <= w <= 1400, (path.name, img.shape)
        assert img[..., :3].std() > 0.01, f"{path.name} is blank"
        pixels[path.name] = img
    return pixels


# ---------------------------------------------------------------------------------------------
# Whole reports
# ---------------------------------------------------------------------------------------------


def test_image_report_gray(tmp_path: Path) -> None:
    case = make_case(parse_prior("gaussian", 10), (1, 16, 16))
    out = tmp_path / "run" / "report"  # created with its parents
    pixels = check_report(write_report(out, modality="image", **case), out)
    recon = pixels["reconstructions.png"][..., :3]
    assert np.allclose(recon[..., 0], recon[..., 1]) and np.allclose(recon[..., 1], recon[..., 2])


def test_image_report_rgb_hybrid(tmp_path: Path) -> None:
    prior = parse_prior("2:bimodal(2,0.5)+2:uniform(-1,1)+laplace", 6)
    case = make_case(prior, (3, 12, 12), n_examples=5)
    pixels = check_report(write_report(tmp_path, modality="image", **case), tmp_path)
    # channel-first RGB was transposed, not shown as gray: the channels differ
    recon = pixels["reconstructions.png"][..., :3]
    assert np.abs(recon[..., 0] - recon[..., 1]).max() > 0.2


def test_tabular_report(tmp_path: Path) -> None:
    case = make_case(parse_prior("laplace(0,2)", 4), (MAX_FEATURES + 3,), n_examples=40)
    seen = []  # decode sees float32 (n, d) batches, what a model takes
    inner = case["decode"]
    case["decode"] = lambda z: seen.append((z.dtype, z.shape[1])) or inner(z)
    check_report(write_report(tmp_path, modality="tabular", max_dims=3, **case), tmp_path)
    assert set(seen) == {(np.dtype(np.float32), 4)}


def test_report_empirical_prior_and_one_dim(tmp_path: Path) -> None:
    bank = np.random.default_rng(5).gamma(2.0, 1.0, size=(500, 2))
    np.save(tmp_path / "bank.npy", bank)
    prior = parse_prior(f"1:gaussian+2:empirical({tmp_path / 'bank.npy'})", 3)
    case = make_case(prior, (1, 8, 8), n=300, n_examples=3)
    out = tmp_path / "hybrid"
    check_report(write_report(out, modality="image", **case), out)

    one = make_case(parse_prior("uniform(-1,1)", 1), (2,), n=200, n_examples=10)
    out = tmp_path / "one"
    check_report(write_report(out, modality="tabular", **one), out)


# ---------------------------------------------------------------------------------------------
# KS numbers and figure contents
# ---------------------------------------------------------------------------------------------


def _column_cdf(prior: Prior, j: int) -> Callable[[np.ndarray], np.ndarray]:
    def cdf(x: np.ndarray) -> np.ndarray:
        full = np.zeros((len(x), prior.dim))
        full[:, j] = x
        return prior.cdf(full)[:, j]

    return cdf


@pytest.mark.parametrize(
    "spec", ["gaussian(1,2)", "uniform(-5,5)", "bimodal(3,1)", "correlated(0.5)", "bank"]
)
def test_latent_ks_matches_scipy(spec: str, tmp_path: Path) -> None:
    if spec == "bank":  # empirical: a step CDF, with ties between latents and the bank
        np.save(tmp_path / "bank.npy", np.random.default_rng(3).normal(size=(200, 3)))
        spec = f"empirical({tmp_path / 'bank.npy'})"
    prior = parse_prior(spec, 3)
    rng = np.random.default_rng(7)
    latents = prior.sample(500, rng) * 1.1 + 0.1  # near, not at, the prior
    ks = latent_ks(latents, prior)
    expected = [
        stats.kstest(latents[:, j], _column_cdf(prior, j)).statistic for j in range(prior.dim)
    ]
    np.testing.assert_allclose(ks, expected, rtol=0, atol=1e-12)


def test_marginals_show_ks_and_see_a_shift(tmp_path: Path) -> None:
    prior = parse_prior("gaussian", 4)
    matched = prior.sample(2000, np.random.default_rng(0))
    shifted = matched + np.array([0.0, 0.5, 0.0, 1.0])
    ks_matched, ks_shifted = latent_ks(matched, prior), latent_ks(shifted, prior)
    assert ks_matched.max() < 0.05
    assert ks_shifted[1] > 0.15 and ks_shifted[3] > 0.3
    np.testing.assert_array_equal(ks_shifted[[0, 2]], ks_matched[[0, 2]])

    fig = marginals_figure(shifted, prior)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"z{j}   KS = {ks_shifted[j]:.3f}" for j in range(4)]

    a = save_figure(marginals_figure(matched, prior), tmp_path / "a.png")
    b = save_figure(fig, tmp_path / "b.png")
    assert not np.array_equal(read_png(a), read_png(b))


def test_max_dims_limits_panels() -> None:
    prior = parse_prior("gaussian", 12)
    latents = prior.sample(300, np.random.default_rng(0))
    assert len(marginals_figure(latents, prior, max_dims=7).axes) == 7
    assert len(marginals_figure(latents, prior, max_dims=50).axes) == 12
    assert len(pairs_figure(latents, prior, max_dims=3).axes) == 6  # lower triangle + diagonal
    assert len(pairs_figure(latents, prior).axes) == 15  # at most 5 dims


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def good() -> dict:
    return make_case(parse_prior("gaussian", 3), (1, 8, 8), n=50, n_examples=4)


def _bad_decode(z: np.ndarray) -> np.ndarray:
    return np.zeros((len(z), 1, 8, 9))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"latents": np.zeros((50, 4))}, "latents have 4 dimensions but the prior has 3"),
        ({"latents": np.zeros(50)}, "latents must be a 2-D array"),
        ({"latents": np.full((50, 3), np.nan)}, "latents contains NaN or Inf"),
        ({"reconstructions": np.zeros((3, 1, 8, 8))}, "must have the same shape"),
        ({"inputs": np.zeros((4, 64)), "reconstructions": np.zeros((4, 64))}, "(n, C, H, W)"),
        ({"inputs": np.zeros((4, 2, 8, 8)), "reconstructions": np.zeros((4, 2, 8, 8))}, "C = 1"),
        ({"inputs": np.zeros((0, 1, 8, 8)), "reconstructions": np.zeros((0, 1, 8, 8))}, "empty"),
        ({"modality": "audio"}, "modality must be one of image, tabular"),
        ({"modality": "tabular"}, "tabular inputs must have shape (n, features)"),
        ({"decode": _bad_decode}, "decode returned shape (24, 1, 8, 9)"),
        ({"max_dims": 0}, "max_dims must be a positive integer"),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    good: dict, change: dict, message: str, tmp_path: Path
) -> None:
    args = {"modality": "image", **good, **change}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_report(tmp_path / "report", **args)
    assert not (tmp_path / "report").exists()


def test_single_nan_latent_rejected(good: dict) -> None:
    good["latents"][10, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf in 1 row"):
        latent_ks(good["latents"], good["prior"])


def test_module_imports_neither_torch_nor_pyplot() -> None:
    code = (
        "import sys, sculptserve.training.report; "
        "print('torch' in sys.modules, 'matplotlib.pyplot' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["False", "False"]
