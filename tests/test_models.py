"""Tests for sculptserve.training.models: shapes, encoder contract, stochastic sampling, config
round trip, traceability of the exported encoder, and that a small model can learn."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from sculptserve.training.models import Autoencoder, build_autoencoder, conv_plan  # noqa: E402

# (input shape, expected encoder spatial sizes) for the datasets the project ships with
IMAGE_SHAPES = {
    (1, 64, 64): [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)],  # shapes
    (1, 28, 28): [(28, 28), (14, 14), (7, 7)],  # fashion-mnist
    (1, 8, 8): [(8, 8), (4, 4)],  # digits
    (3, 32, 32): [(32, 32), (16, 16), (8, 8), (4, 4)],  # RGB folder
}
ALL_SHAPES = [*IMAGE_SHAPES, (12,)]
LATENT = 5


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small(shape: tuple[int, ...], stochastic: bool = False, seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return build_autoencoder(shape, LATENT, stochastic=stochastic, width=8, hidden=32)


@pytest.mark.parametrize("shape", list(IMAGE_SHAPES))
def test_conv_plan_halves_until_small_or_odd(shape):
    assert conv_plan(*shape[1:]) == IMAGE_SHAPES[shape]


def test_conv_plan_halves_large_odd_sides():
    # an odd side above 8 is halved (floor) rather than kept as a huge feature map
    assert conv_plan(25, 25) == [(25, 25), (12, 12), (6, 6), (3, 3)]
    assert conv_plan(4, 4) == [(4, 4)]


@pytest.mark.parametrize("shape", [*ALL_SHAPES, (3, 25, 25), (1, 4, 4)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_output_shapes(shape, stochastic):
    model = small(shape, stochastic)
    x = torch.rand(3, *shape)
    out = model(x)
    assert out["recon"].shape == x.shape
    assert out["z"].shape == out["mean"].shape == (3, LATENT)
    if stochastic:
        assert out["logvar"].shape == (3, LATENT)
    else:
        assert out["logvar"] is None
    assert model.decoder(out["mean"]).shape == x.shape


@pytest.mark.parametrize("shape", list(IMAGE_SHAPES))
def test_image_decoder_outputs_lie_in_unit_interval(shape):
    with torch.no_grad():
        recon = small(shape).decoder(10.0 * torch.randn(4, LATENT))
    assert float(recon.min()) >= 0.0
    assert float(recon.max()) <= 1.0


def test_tabular_decoder_output_is_unbounded():
    with torch.no_grad():
        recon = small((12,)).decoder(100.0 * torch.randn(64, LATENT))
    assert float(recon.abs().max()) > 1.0  # identity output for standardized features


@pytest.mark.parametrize("shape", [(1, 28, 28), (12,)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_encoder_module_returns_the_mean(shape, stochastic):
    model = small(shape, stochastic).train()
    x = torch.rand(4, *shape)
    mean, logvar = model.encode(x)
    assert torch.equal(model.encoder(x), mean)
    assert (logvar is not None) == stochastic


@pytest.mark.parametrize("shape", [(1, 8, 8), (12,)])
def test_stochastic_samples_only_in_training(shape):
    model = small(shape, stochastic=True)
    x = torch.rand(16, *shape)
    with torch.no_grad():
        out = model.train()(x)
    assert not torch.allclose(out["z"], out["mean"])
    # the sample's spread matches the encoder's variance: (z - mean) / std is standard normal
    eps = (out["z"] - out["mean"]) / torch.exp(0.5 * out["logvar"])
    assert abs(float(eps.std()) - 1.0) < 0.3
    out = model.eval()(x)
    assert torch.equal(out["z"], out["mean"])


@pytest.mark.parametrize("shape", [(1, 28, 28)])
def test_deterministic_encoder_uses_the_mean(shape):
    out = small(shape).train()(torch.rand(2, *shape))
    assert torch.equal(out["z"], out["mean"])


def test_samples_are_encoded_independently():
    # no BatchNorm: a sample's latent must not depend on the rest of its batch
    model = small((1, 28, 28)).train()
    x = torch.rand(6, 1, 28, 28)
    assert torch.allclose(model.encoder(x)[:2], model.encoder(x[:2]), atol=1e-6)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("shape", [(3, 32, 32), (12,)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_describe_round_trips_through_json(shape, stochastic):
    model = build_autoencoder(shape, 7, stochastic=stochastic, width=4, hidden=16)
    config = json.loads(json.dumps(model.describe()))
    rebuilt = build_autoencoder(**config)
    assert rebuilt.describe() == model.describe()
    assert rebuilt.stochastic == stochastic
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


def test_init_is_deterministic_given_the_seed():
    a, b = small((1, 8, 8), seed=3).state_dict(), small((1, 8, 8), seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = small((1, 8, 8), seed=4).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_shape": (28, 28), "latent_dim": 2}, "input_shape"),
        ({"input_shape": (1, 0, 28), "latent_dim": 2}, "input_shape"),
        ({"input_shape": (12,), "latent_dim": 0}, "latent_dim"),
        ({"input_shape": (12,), "latent_dim": 2, "width": 2.5}, "width"),
        ({"input_shape": (12,), "latent_dim": 2, "hidden": True}, "hidden"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_autoencoder(**kwargs)


@pytest.mark.parametrize("shape, stochastic", [((1, 28, 28), True), ((12,), False)])
def test_encoder_exports_with_a_dynamic_batch(shape, stochastic):
    # traced at batch 2 (batch 1 would be specialized), then run at batch 1 and 7
    encoder = small(shape, stochastic).eval().encoder
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        encoder, (torch.rand(2, *shape),), dynamic_shapes={"x": {0: batch}}
    ).module()
    with torch.no_grad():
        for n in (1, 7):
            x = torch.rand(n, *shape)
            got, want = program(x), encoder(x)
            assert got.shape == (n, LATENT)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def random_rectangles(n: int, size: int, seed: int) -> torch.Tensor:
    """Binary images with one filled axis-aligned rectangle each (a dSprites-like toy)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size)
    for i in range(n):
        y0, x0 = torch.randint(0, size - 4, (2,), generator=g).tolist()
        h, w = torch.randint(3, 8, (2,), generator=g).tolist()
        images[i, 0, y0 : y0 + h, x0 : x0 + w] = 1.0
    return images


def test_small_autoencoder_overfits_a_few_images():
    x = random_rectangles(16, 16, seed=0)
    torch.manual_seed(0)
    model = build_autoencoder((1, 16, 16), 8, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return torch.mean((model(x)["recon"] - x) ** 2)

    with torch.no_grad():
        initial = float(loss())
    for _ in range(200):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    with torch.no_grad():
        final = float(loss())
    assert final < 0.5 * initial, (initial, final)
