"""The service core shared by REST and gRPC."""

import numpy as np
import pytest
from bundle_factory import make_bundle, use_normalizing_decoder
from prometheus_client import CollectorRegistry

from sculptserve.bundle.load import load_bundle
from sculptserve.serving.core import DEFAULT_GRPC_RESPONSE_MAX_BYTES, EmbeddingApp, ServiceLimits
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.settings import SculptDeprecationWarning, load_settings


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(make_bundle(tmp_path / "b"))


def test_overflowing_inputs_are_a_client_error_and_never_reach_the_monitor(bundle, monkeypatch):
    app = EmbeddingApp(bundle, metrics_registry=CollectorRegistry(), background_drift=False)
    encode, decode = app.runtime.encode, app.runtime.decode
    # Finite inputs that overflow a real encoder: simulated, the toy model is too small.
    monkeypatch.setattr(app.runtime, "encode", lambda x: encode(x) * np.inf)
    monkeypatch.setattr(app.runtime, "reconstruct", lambda x: decode(encode(x)) * np.nan)
    with pytest.raises(PayloadError, match=r"item 0: .*non-finite embeddings"):
        app.embed(np.ones((2, 1, 4, 4)).tolist())
    with pytest.raises(PayloadError, match="non-finite outputs"):
        app.reconstruct(np.ones((1, 1, 4, 4)).tolist())
    assert app.drift()["embeddings_seen"] == 0
    monkeypatch.undo()
    app.embed(np.zeros((2, 1, 4, 4)).tolist())
    assert app.drift()["embeddings_seen"] == 2


def test_drift_can_be_switched_off(bundle):
    app = EmbeddingApp(bundle, drift_enabled=False)
    app.embed(np.zeros((1, 1, 4, 4)).tolist())
    assert app.drift()["state"] == "disabled"


def test_limits_from_environment():
    env = {"SCULPT_REQUEST_MAX_ITEMS": "7", "SCULPT_REQUEST_MAX_BYTES": "1024"}
    limits = load_settings(env).limits()
    assert limits.max_items == 7 and limits.max_body_bytes == 1024 and limits.max_generate == 256
    with pytest.raises(ValueError, match="SCULPT_REQUEST_MAX_SAMPLES"):
        load_settings({"SCULPT_REQUEST_MAX_SAMPLES": "many"})
    with pytest.raises(ValueError, match="must be >= 1"):
        load_settings({"SCULPT_REQUEST_MAX_ITEMS": "0"})
    with pytest.raises(ValueError, match="max_items must be an integer >= 1"):
        ServiceLimits(max_items=0)
    # the old names still work for one release, with a warning naming the new one
    old = {"SCULPT_MAX_ITEMS": "7", "SCULPT_MAX_BODY_BYTES": "1024"}
    with pytest.warns(SculptDeprecationWarning, match="use SCULPT_REQUEST_MAX_ITEMS"):
        assert load_settings(old).limits() == limits
    with (
        pytest.warns(SculptDeprecationWarning),
        pytest.raises(ValueError, match="SCULPT_MAX_GENERATE"),
    ):
        load_settings({"SCULPT_MAX_GENERATE": "many"})


def test_generate_limits(bundle):
    app = EmbeddingApp(bundle, limits=ServiceLimits(max_generate=4), drift_enabled=False)
    result = app.generate(4, seed=1)
    assert result.samples.shape == (4, 1, 4, 4) and result.latents.shape == (4, 3)
    assert result.png is None and result.seed == 1
    with pytest.raises(PayloadError, match=r"\[1, 4\]"):
        app.generate(5)
    with pytest.raises(PayloadError, match="unknown output"):
        app.generate(1, output="gif")


def test_settings_defaults_are_the_service_limits_defaults():
    assert load_settings({}).limits() == ServiceLimits()
    assert ServiceLimits().max_grpc_response_bytes == DEFAULT_GRPC_RESPONSE_MAX_BYTES < 4 * 2**20
    limits = load_settings({"SCULPT_GRPC_RESPONSE_MAX_BYTES": "16777216"}).limits()
    assert limits.max_grpc_response_bytes == 16 * 2**20
    with pytest.raises(ValueError, match="SCULPT_GRPC_RESPONSE_MAX_BYTES='1000' must be >= 65536"):
        load_settings({"SCULPT_GRPC_RESPONSE_MAX_BYTES": "1000"})


def test_generate_refuses_non_finite_samples_from_huge_fixed_values(tmp_path):
    """Issue 13, finding 7: {"n": 2, "fixed": {"0": -3e38}} answered all-NaN samples."""
    bundle = load_bundle(use_normalizing_decoder(make_bundle(tmp_path / "b")))
    app = EmbeddingApp(bundle, drift_enabled=False)
    _, samples = app.runtime.generate(2, 0, {0: -3e38})
    assert np.isnan(samples).all()  # what the decoder makes of it (a trained one too)
    with pytest.raises(
        PayloadError,
        match=r"^item 0: the fixed values \{0: -3e\+38\} give non-finite samples \(2 of 2 "
        r"items\); keep fixed values near the prior's range \(0\.1%\.\.99\.9% quantiles: "
        r"dimension 0 in \[-3\.09, 3\.09\]\)$",
    ):
        app.generate(2, fixed={"0": -3e38})
    for output in ("array", "png"):
        with pytest.raises(PayloadError, match="non-finite samples"):
            app.generate(1, seed=3, fixed={1: 3e38, 2: 0.0}, output=output)
    # ordinary values, even well outside the prior's range, still generate
    result = app.generate(2, fixed={"0": -8.0})
    assert np.isfinite(result.samples).all() and (result.latents[:, 0] == -8.0).all()


def test_generate_non_finite_without_fixed_values_is_a_server_error(bundle, monkeypatch):
    # without `fixed`, the client asked for nothing unusual: a broken decoder is not a 400
    app = EmbeddingApp(bundle, drift_enabled=False)
    generate = app.runtime.generate

    def nan_samples(*args, **kwargs):
        latents, samples = generate(*args, **kwargs)
        return latents, samples * np.nan

    monkeypatch.setattr(app.runtime, "generate", nan_samples)
    with pytest.raises(RuntimeError, match="decoder is broken") as info:
        app.generate(2, seed=5)
    assert not isinstance(info.value, PayloadError)


def test_a_batch_array_embeds_like_the_same_items(bundle):
    """The binary transports' path: a (B, C, H, W) array of raw values gives the embeddings
    of the same values sent as nested lists (the manifest's normalization applied once)."""
    app = EmbeddingApp(bundle, metrics_registry=CollectorRegistry(), background_drift=False)
    raw = np.random.default_rng(0).uniform(0, 255, (5, 1, 4, 4))
    from_items = app.embed(raw.tolist()).embeddings
    for dtype in (np.float32, np.float64, np.uint8):
        batch = raw.astype(dtype)
        expected = from_items if dtype != np.uint8 else app.embed(batch.tolist()).embeddings
        np.testing.assert_allclose(app.embed(batch).embeddings, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        app.reconstruct(raw.astype(np.float32)).outputs,
        app.reconstruct(raw.tolist()).outputs,
        atol=1e-6,
    )
    assert app.drift()["embeddings_seen"] == 5 * 5  # 5 embed calls of 5 rows: all observed


def test_identity_normalization_takes_a_float32_batch_without_a_copy(tmp_path):
    from sculptserve.serving.inputs import decode_batch, is_identity

    app = EmbeddingApp(load_bundle(make_bundle(tmp_path / "t", input_shape=(6,))))
    assert is_identity(app.spec)
    batch = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    assert decode_batch(batch, app.spec, max_items=8) is batch
    np.testing.assert_allclose(
        app.embed(batch).embeddings, app.embed(batch.tolist()).embeddings, atol=1e-6
    )
    app.close()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((2, 1, 4, 5), np.float32), r"shape \[2, 1, 4, 5\], expected \(B, 1, 4, 4\)"),
        (np.zeros((1, 4, 4), np.float32), "one example without a batch axis"),
        (np.zeros((0, 1, 4, 4), np.float32), "batch is empty"),
        (np.full((2, 1, 4, 4), np.nan, np.float32), "item 0: holds NaN"),
        (np.zeros((2, 1, 4, 4), bool), "real numbers"),
        (np.zeros((9, 1, 4, 4), np.float32), "too many items: 9, at most 8"),
    ],
)
def test_a_bad_batch_array_is_a_client_error(bundle, batch, message):
    app = EmbeddingApp(bundle, limits=ServiceLimits(max_items=8), drift_enabled=False)
    with pytest.raises(PayloadError, match=message):
        app.embed(batch)


def test_decode_takes_latents_to_outputs(bundle):
    app = EmbeddingApp(bundle, limits=ServiceLimits(max_items=8), drift_enabled=False)
    z = app.embed(np.zeros((2, 1, 4, 4), np.float32)).embeddings
    np.testing.assert_allclose(
        app.decode(z).outputs,
        app.reconstruct(np.zeros((2, 1, 4, 4), np.float32)).outputs,
        atol=1e-6,
    )
    with pytest.raises(PayloadError, match=r"latents has shape \[2, 4\], expected \(B, 3\)"):
        app.decode(np.zeros((2, 4), np.float32))
    with pytest.raises(PayloadError, match="too many items"):
        app.decode(np.zeros((9, 3), np.float32))
