"""Drift monitoring on a real trained and exported model, through the service core."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sculptserve.bundle.load import load_bundle
from sculptserve.export.writer import ExportOptions, export_run, heldout_rows
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.inputs import raw_items
from sculptserve.training.config import TrainConfig
from sculptserve.training.data import load_dataset
from sculptserve.training.trainer import train

WINDOW, EVERY = 256, 128
# The default calibration (combined rule, bootstrap null, ERL target) on a smaller pool.
OPTIONS = ExportOptions(n_reference=1024, window=WINDOW, n_resamples=4096, pool_rows=4096)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    run = root / "run"
    train(
        TrainConfig(
            out=str(run),
            latent_dim=4,
            batch_size=64,
            max_steps=150,
            width=8,
            val_size=256,
            report=False,
        ),
        progress=False,
    )
    bundle = load_bundle(export_run(run, root / "bundle", OPTIONS))
    service = EmbeddingApp(bundle, metrics_registry=CollectorRegistry(), background_drift=False)
    yield service
    service.close()


@pytest.fixture(scope="module")
def traffic():
    """Held-out images the export did not use (it drew its rows from this permutation)."""
    val = load_dataset("shapes", split="val")
    fresh = np.setdiff1d(np.arange(len(val)), heldout_rows(len(val), OPTIONS))
    return val, np.random.default_rng(1).permutation(fresh)


def send(app: EmbeddingApp, x: np.ndarray) -> list[tuple[str, int]]:
    """Embed in requests of EVERY images; (state, windows evaluated) after each."""
    out = []
    for start in range(0, len(x), EVERY):
        app.embed(raw_items(x[start : start + EVERY]))
        report = app.drift()
        out.append((report["state"], report["windows_evaluated"]))
    return out


def test_in_distribution_traffic_stays_quiet_then_inverted_images_alert(app, traffic):
    val, rows = traffic
    quiet = send(app, val.get_batch(rows[: WINDOW + 21 * EVERY]))
    evaluated = [s for s, n in quiet if n > 0]
    assert len(evaluated) >= 20
    assert all(state == "ok" for state in evaluated), quiet

    inverted = 1.0 - val.get_batch(rows[WINDOW + 21 * EVERY :][: WINDOW + 2 * EVERY])
    states = [s for s, _ in send(app, inverted)]
    full = states[WINDOW // EVERY - 1 :]  # evaluations whose window is entirely shifted
    assert "drift" in full[:2], states


def test_noised_images_alert(app, traffic):
    val, rows = traffic
    send(app, val.get_batch(rows[-(WINDOW + 4 * EVERY) :][: 2 * WINDOW]))  # back to normal
    assert app.drift()["state"] == "ok"
    rng = np.random.default_rng(2)
    clean = val.get_batch(rows[-(WINDOW + 4 * EVERY) :][: WINDOW + 2 * EVERY])
    noised = np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1).astype(np.float32)
    states = [s for s, _ in send(app, noised)]
    assert "drift" in states[WINDOW // EVERY - 1 :][:2], states
