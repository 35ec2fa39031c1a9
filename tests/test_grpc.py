"""The gRPC front end: sculpt.v1.Sculpt, health, reflection, API key, limits, bad input.

In-process tests run a ``grpc.aio`` server on a loopback port in a background thread with its
own event loop and call it with the generated (sync) stubs, so the tests need no asyncio
plugin. Two subprocess tests start the real entry point and check that serving never imports
torch.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from bundle_factory import (
    make_bundle,
    toy_decode,
    toy_encode,
    toy_weights,
    use_normalizing_decoder,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from PIL import Image

from sculptserve.bundle.load import load_bundle
from sculptserve.serving.core import EmbeddingApp, ServiceLimits
from sculptserve.serving.drift import STATES
from sculptserve.serving.encodings import ENCODINGS
from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as pb_grpc
from sculptserve.serving.grpc.server import bound_port, build_server
from sculptserve.serving.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
INPUT_SHAPE = (1, 4, 4)
LATENT_DIM = 3
KEY = "s3cret-key"
LIMITS = ServiceLimits(max_items=64, max_generate=32, max_body_bytes=256 * 1024)
TIMEOUT = 10.0  # per RPC: a hung server fails a test instead of the whole run


# --- helpers -----------------------------------------------------------------------------------


def tensor(x: np.ndarray) -> pb.Tensor:
    """A float32 batch as an input Tensor (little-endian)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    return pb.Tensor(shape=x.shape, data=x.tobytes(), dtype="float32")


def array(t: pb.Tensor) -> np.ndarray:
    """A response Tensor as numpy, by its dtype name."""
    return np.frombuffer(t.data, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(t.shape)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def batch(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *INPUT_SHAPE), dtype=np.float32)


def embed_request(x: np.ndarray, encoding: str = "") -> pb.EmbedRequest:
    return pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor(x)), encoding=encoding)


class ServerThread:
    """A build_server() server on 127.0.0.1:<free port>, driven by its own event loop."""

    def __init__(self, app: EmbeddingApp, api_key: str | None = "") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._call(self._start(app, api_key))
        self.port = bound_port(self.server)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @staticmethod
    async def _start(app: EmbeddingApp, api_key: str | None) -> grpc.aio.Server:
        server = build_server(app, port=0, host="127.0.0.1", api_key=api_key)
        await server.start()
        return server

    def stop(self) -> None:
        self._call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(
        tmp_path_factory.mktemp("grpc") / "toy", latent_dim=LATENT_DIM, input_shape=INPUT_SHAPE
    )


@pytest.fixture(scope="module")
def app(bundle: Path) -> Iterator[EmbeddingApp]:
    app = EmbeddingApp(load_bundle(bundle), limits=LIMITS, background_drift=False)
    yield app
    app.close()


@pytest.fixture(scope="module")
def server(app: EmbeddingApp) -> Iterator[ServerThread]:
    srv = ServerThread(app, api_key="")  # "" = no key, whatever the environment says
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.SculptStub:
    return pb_grpc.SculptStub(channel)


def assert_still_serving(stub: pb_grpc.SculptStub) -> None:
    x = batch(2, seed=9)
    z = array(stub.Embed(embed_request(x), timeout=TIMEOUT).embeddings)
    np.testing.assert_allclose(z, toy_encode(x, toy_weights(INPUT_SHAPE, LATENT_DIM)[0]), atol=1e-5)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# --- the API -----------------------------------------------------------------------------------


def test_embed_float32_matches_the_model(stub: pb_grpc.SculptStub) -> None:
    x = batch(5)
    resp = stub.Embed(embed_request(x), timeout=TIMEOUT)
    assert resp.encoding == "float32"
    assert resp.embeddings.dtype == "float32"
    assert list(resp.embeddings.shape) == [5, LATENT_DIM]
    w_enc = toy_weights(INPUT_SHAPE, LATENT_DIM)[0]
    np.testing.assert_allclose(array(resp.embeddings), toy_encode(x, w_enc), atol=1e-5)


@pytest.mark.parametrize("encoding", ["float16", "uint8", "int8"])
def test_embed_encodings_match_the_app(
    stub: pb_grpc.SculptStub, app: EmbeddingApp, encoding: str
) -> None:
    x = batch(6, seed=1)
    resp = stub.Embed(embed_request(x, encoding), timeout=TIMEOUT)
    assert resp.encoding == encoding == resp.embeddings.dtype
    codes = array(resp.embeddings)
    assert codes.dtype == ENCODINGS[encoding].dtype
    # one byte per dimension for the quantized codes: the point of them
    assert len(resp.embeddings.data) == 6 * LATENT_DIM * codes.dtype.itemsize
    expected = app.embed(list(x), encoding).embeddings  # the core's array, sent as it is
    assert expected.dtype == ENCODINGS[encoding].dtype
    np.testing.assert_array_equal(codes, expected)


def test_embed_png_images(stub: pb_grpc.SculptStub) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, size=(3, 4, 4))
    req = pb.EmbedRequest(inputs=pb.Inputs(images=[png(p) for p in pixels]))
    z = array(stub.Embed(req, timeout=TIMEOUT).embeddings)
    x = (pixels / 255.0).astype(np.float32)[:, None]
    np.testing.assert_allclose(z, toy_encode(x, toy_weights(INPUT_SHAPE, LATENT_DIM)[0]), atol=1e-5)


def test_embed_channel_last_layout(stub: pb_grpc.SculptStub) -> None:
    x = batch(2, seed=3)
    z_first = array(stub.Embed(embed_request(x), timeout=TIMEOUT).embeddings)
    z_last = array(stub.Embed(embed_request(x.transpose(0, 2, 3, 1)), timeout=TIMEOUT).embeddings)
    np.testing.assert_array_equal(z_first, z_last)


def test_reconstruct(stub: pb_grpc.SculptStub) -> None:
    x = batch(4, seed=4)
    resp = stub.Reconstruct(pb.ReconstructRequest(inputs=pb.Inputs(tensor=tensor(x))))
    w_enc, w_dec = toy_weights(INPUT_SHAPE, LATENT_DIM)
    expected = toy_decode(toy_encode(x, w_enc), w_dec, INPUT_SHAPE)
    assert list(resp.outputs.shape) == [4, *INPUT_SHAPE]
    np.testing.assert_allclose(array(resp.outputs), expected, atol=1e-5)


def test_generate_is_deterministic_per_seed(stub: pb_grpc.SculptStub) -> None:
    a = stub.Generate(pb.GenerateRequest(n=4, seed=7), timeout=TIMEOUT)
    b = stub.Generate(pb.GenerateRequest(n=4, seed=7), timeout=TIMEOUT)
    c = stub.Generate(pb.GenerateRequest(n=4, seed=8), timeout=TIMEOUT)
    assert a == b
    assert a.latents.data != c.latents.data
    assert a.seed == 7
    assert list(a.latents.shape) == [4, LATENT_DIM]
    assert list(a.samples.shape) == [4, *INPUT_SHAPE]
    w_dec = toy_weights(INPUT_SHAPE, LATENT_DIM)[1]
    np.testing.assert_allclose(
        array(a.samples), toy_decode(array(a.latents), w_dec, INPUT_SHAPE), atol=1e-5
    )


def test_generate_fixed_dims(stub: pb_grpc.SculptStub) -> None:
    resp = stub.Generate(pb.GenerateRequest(n=5, seed=1, fixed={0: 1.5, 2: -0.25}))
    latents = array(resp.latents)
    np.testing.assert_array_equal(latents[:, 0], 1.5)
    np.testing.assert_array_equal(latents[:, 2], -0.25)
    assert np.unique(latents[:, 1]).size == 5  # the free dimension still varies


def test_generate_png(stub: pb_grpc.SculptStub) -> None:
    resp = stub.Generate(pb.GenerateRequest(n=3, seed=2, output="png"), timeout=TIMEOUT)
    assert len(resp.png) == 3
    assert not resp.HasField("samples")
    for data in resp.png:
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.size, img.mode) == ("PNG", (4, 4), "L")


def test_get_info(stub: pb_grpc.SculptStub, app: EmbeddingApp) -> None:
    resp = stub.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
    info = json.loads(resp.json)
    assert {"name", "version", "input", "latent_dim", "limits", "encodings", "providers"} <= set(
        info
    )
    assert (resp.name, resp.version, resp.latent_dim) == ("toy", "v1", LATENT_DIM)
    assert list(resp.input_shape) == list(INPUT_SHAPE)
    assert resp.modality == "image"
    assert info["limits"]["max_generate"] == LIMITS.max_generate


def test_get_drift(stub: pb_grpc.SculptStub) -> None:
    resp = stub.GetDrift(pb.GetDriftRequest(), timeout=TIMEOUT)
    report = json.loads(resp.json)
    assert {"state", "mmd2", "mmd2_threshold", "lps_linear", "embeddings_seen"} <= set(report)
    assert resp.state == report["state"] in STATES
    assert resp.alert is (resp.state == "drift")


def test_health_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sculpt.v1.Sculpt"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    err = rpc_error(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def list_services(channel: grpc.Channel) -> list[str]:
    """Service names through the raw ServerReflection stream (what grpcurl does)."""
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (resp,) = list(refl.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    return [s.name for s in resp.list_services_response.service]


def test_reflection(channel: grpc.Channel) -> None:
    assert {"sculpt.v1.Sculpt", "grpc.health.v1.Health"} <= set(list_services(channel))
    # the helper a dynamic client uses: the full schema comes back from the server
    db = ProtoReflectionDescriptorDatabase(channel)
    from google.protobuf.descriptor_pool import DescriptorPool

    service = DescriptorPool(db).FindServiceByName("sculpt.v1.Sculpt")
    assert {m.name for m in service.methods} == {
        "Embed",
        "Generate",
        "Reconstruct",
        "GetDrift",
        "GetInfo",
    }


# --- bad input ---------------------------------------------------------------------------------


def _nan_batch() -> np.ndarray:
    x = batch(3)
    x[1, 0, 2, 3] = np.nan
    return x


def _inputs(**kw: Any) -> pb.EmbedRequest:
    return pb.EmbedRequest(inputs=pb.Inputs(**kw))


BAD_REQUESTS: dict[str, tuple[str, Callable[[], Any], str]] = {
    # case: (method, request factory, text the message must contain)
    "wrong shape": ("Embed", lambda: embed_request(np.zeros((2, 1, 5, 5))), "[1, 5, 5]"),
    "no batch axis": (
        "Embed",
        lambda: _inputs(tensor=pb.Tensor(shape=[16], data=bytes(64))),
        "batch axis",
    ),
    "nan": ("Embed", lambda: embed_request(_nan_batch()), "item 1: holds NaN"),
    "inf": (
        "Reconstruct",
        lambda: pb.ReconstructRequest(
            inputs=pb.Inputs(tensor=tensor(np.full((1, 1, 4, 4), np.inf)))
        ),
        "Inf",
    ),
    "data length": (
        "Embed",
        lambda: _inputs(tensor=pb.Tensor(shape=[2, 1, 4, 4], data=bytes(10))),
        "holds 10 bytes but shape [2, 1, 4, 4] of float32 needs 128",
    ),
    "dtype": (
        "Embed",
        lambda: _inputs(tensor=pb.Tensor(shape=[1, 1, 4, 4], data=bytes(16), dtype="uint8")),
        "dtype 'uint8' is not supported",
    ),
    "negative dim": (
        "Embed",
        lambda: _inputs(tensor=pb.Tensor(shape=[-1, 1, 4, 4], data=b"")),
        "batch size must be >= 0",
    ),
    "zero-size example": (
        "Embed",
        lambda: _inputs(tensor=pb.Tensor(shape=[10**12, 0, 4, 4], data=b"")),
        "every example dimension >= 1",
    ),
    "undecodable image": ("Embed", lambda: _inputs(images=[b"not a png"]), "cannot decode"),
    "image size": ("Embed", lambda: _inputs(images=[png(np.zeros((5, 5)))]), "5x5"),
    "empty inputs": ("Embed", lambda: pb.EmbedRequest(), "empty"),
    "empty batch": (
        "Embed",
        lambda: _inputs(tensor=pb.Tensor(shape=[0, 1, 4, 4], data=b"")),
        "empty",
    ),
    "tensor and images": (
        "Embed",
        lambda: _inputs(tensor=tensor(batch(1)), images=[b"x"]),
        "not both",
    ),
    "too many items": ("Embed", lambda: embed_request(batch(65)), "too many items"),
    "unknown encoding": ("Embed", lambda: embed_request(batch(1), "bfloat16"), "unknown encoding"),
    "n too large": (
        "Generate",
        lambda: pb.GenerateRequest(n=33),
        "n must be an integer in [1, 32]",
    ),
    "n zero": ("Generate", lambda: pb.GenerateRequest(n=0), "n must be"),
    "negative seed": ("Generate", lambda: pb.GenerateRequest(n=1, seed=-1), "seed must be"),
    "fixed dim": ("Generate", lambda: pb.GenerateRequest(n=1, fixed={3: 0.0}), "dimension 3"),
    "fixed nan": ("Generate", lambda: pb.GenerateRequest(n=1, fixed={0: math.nan}), "finite"),
    "unknown output": ("Generate", lambda: pb.GenerateRequest(n=1, output="gif"), "unknown output"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_invalid_argument(stub: pb_grpc.SculptStub, case: str) -> None:
    method, make, needle = BAD_REQUESTS[case]
    err = rpc_error(lambda: getattr(stub, method)(make(), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert needle in err.details(), err.details()
    assert_still_serving(stub)


def test_oversized_message_is_resource_exhausted(stub: pb_grpc.SculptStub) -> None:
    x = np.zeros((2, 1, 200, 200), np.float32)  # 320 KB > the 256 KiB limit
    err = rpc_error(lambda: stub.Embed(embed_request(x), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert_still_serving(stub)


def test_unexpected_error_is_internal_and_logged(
    stub: pb_grpc.SculptStub,
    app: EmbeddingApp,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail from deep inside")

    monkeypatch.setattr(app, "embed", broken)
    with caplog.at_level("ERROR", logger="sculptserve.serving.grpc.server"):
        err = rpc_error(lambda: stub.Embed(embed_request(batch(1)), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.details()  # internals stay in the log, not in the reply
    assert any("Embed" in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert_still_serving(stub)


# --- API key -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_channel(app: EmbeddingApp) -> Iterator[grpc.Channel]:
    srv = ServerThread(app, api_key=KEY)
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        yield ch
    srv.stop()


@pytest.mark.parametrize(
    "metadata",
    [None, [("authorization", "Bearer wrong")], [("authorization", KEY)], [("x-api-key", KEY)]],
    ids=["none", "wrong key", "no scheme", "other header"],
)
def test_api_key_required(keyed_channel: grpc.Channel, metadata: Any) -> None:
    stub = pb_grpc.SculptStub(keyed_channel)
    for call in (
        lambda: stub.Embed(embed_request(batch(1)), metadata=metadata, timeout=TIMEOUT),
        lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=TIMEOUT),
    ):
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in err.details()


def test_api_key_accepted(keyed_channel: grpc.Channel) -> None:
    stub = pb_grpc.SculptStub(keyed_channel)
    for header in (f"Bearer {KEY}", f"bearer {KEY}"):
        resp = stub.Embed(
            embed_request(batch(2)), metadata=[("authorization", header)], timeout=TIMEOUT
        )
        assert list(resp.embeddings.shape) == [2, LATENT_DIM]


def test_health_and_reflection_open_without_key(keyed_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(keyed_channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service="sculpt.v1.Sculpt"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert "sculpt.v1.Sculpt" in list_services(keyed_channel)


def test_api_key_from_environment(app: EmbeddingApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCULPT_API_KEY", "from-env")
    # the environment is read by the settings; the entry points pass the key on
    srv = ServerThread(app, api_key=load_settings().api_key)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.SculptStub(ch)
            err = rpc_error(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            auth = [("authorization", "Bearer from-env")]
            assert stub.GetInfo(pb.GetInfoRequest(), metadata=auth, timeout=TIMEOUT).name == "toy"
    finally:
        srv.stop()


# --- bounded responses, non-finite samples, one log line per client error (issue 13) -----------

WIDE_SHAPE = (3, 64, 64)  # 48 KiB of float32 per sample: 256 samples make a 12 MiB response
DEFAULT_CLIENT_LIMIT = 4 * 2**20  # what a gRPC client accepts unless configured otherwise


@pytest.fixture(scope="module")
def wide_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingApp]:
    """A 3 x 64 x 64 model with the default limits and a decoder that normalizes (NaN on
    overflow, as a trained one)."""
    folder = make_bundle(
        tmp_path_factory.mktemp("grpc-wide") / "wide", latent_dim=LATENT_DIM, input_shape=WIDE_SHAPE
    )
    app = EmbeddingApp(load_bundle(use_normalizing_decoder(folder)), background_drift=False)
    yield app
    app.close()


@pytest.fixture(scope="module")
def wide_stub(wide_app: EmbeddingApp) -> Iterator[pb_grpc.SculptStub]:
    srv = ServerThread(wide_app, api_key="")
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:  # default options: 4 MiB
        yield pb_grpc.SculptStub(ch)
    srv.stop()


def _fit(details: str, noun: str) -> int:
    match = re.search(rf"at most (\d+) {noun} fit in one response", details)
    assert match, details
    return int(match.group(1))


def _model_must_not_run(app: EmbeddingApp, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model ran for a request that had to be refused first")

    for name in ("generate", "reconstruct", "encode", "decode"):
        monkeypatch.setattr(app.runtime, name, run)


def test_generate_of_256_samples_is_refused_up_front_naming_the_limit(
    wide_stub: pb_grpc.SculptStub, wide_app: EmbeddingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, finding 8: 256 samples were a 12 MiB response a default client refuses."""
    limit = wide_app.limits.max_grpc_response_bytes
    assert limit < DEFAULT_CLIENT_LIMIT  # the default setting
    with monkeypatch.context() as patch:
        _model_must_not_run(wide_app, patch)
        err = rpc_error(lambda: wide_stub.Generate(pb.GenerateRequest(n=256), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    details = err.details()
    assert details.startswith("Generate of 256 samples would answer up to 12.0"), details
    assert f"gRPC response limit of {limit} bytes" in details
    assert "SCULPT_GRPC_RESPONSE_MAX_BYTES" in details
    fit = _fit(details, "samples")
    # as many as fit do reach a default client; one more is refused
    resp = wide_stub.Generate(pb.GenerateRequest(n=fit, seed=1), timeout=TIMEOUT)
    assert resp.ByteSize() <= limit and list(resp.samples.shape) == [fit, *WIDE_SHAPE]
    err = rpc_error(lambda: wide_stub.Generate(pb.GenerateRequest(n=fit + 1), timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # and the estimate wastes little: at most 1% of what would fit exactly
    assert fit >= 0.99 * limit / (resp.ByteSize() / fit) - 1
    # PNG samples are 4x smaller: 256 fit
    resp = wide_stub.Generate(pb.GenerateRequest(n=256, output="png"), timeout=TIMEOUT)
    assert len(resp.png) == 256 and resp.ByteSize() <= limit
    assert_info_names_the_limit(wide_stub, limit)


def assert_info_names_the_limit(stub: pb_grpc.SculptStub, limit: int) -> None:
    info = json.loads(stub.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT).json)
    assert info["limits"]["max_grpc_response_bytes"] == limit


def test_reconstruct_of_256_images_is_refused_up_front(
    wide_stub: pb_grpc.SculptStub, wide_app: EmbeddingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = png(np.zeros((64, 64, 3)))  # 256 of them are a small request: PNG compresses
    request = pb.ReconstructRequest(inputs=pb.Inputs(images=[image] * 256))
    with monkeypatch.context() as patch:
        _model_must_not_run(wide_app, patch)
        err = rpc_error(lambda: wide_stub.Reconstruct(request, timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert err.details().startswith("Reconstruct of 256 inputs would answer up to 12.0")
    fit = _fit(err.details(), "inputs")
    request = pb.ReconstructRequest(inputs=pb.Inputs(images=[image] * fit))
    resp = wide_stub.Reconstruct(request, timeout=TIMEOUT)
    assert list(resp.outputs.shape) == [fit, *WIDE_SHAPE]
    # embeddings are small: 256 inputs are answered
    resp = wide_stub.Embed(pb.EmbedRequest(inputs=pb.Inputs(images=[image] * 256)))
    assert list(resp.embeddings.shape) == [256, LATENT_DIM]


def test_generate_with_huge_fixed_values_is_invalid_argument(
    wide_stub: pb_grpc.SculptStub,
) -> None:
    """Issue 13, finding 7: fixed {0: -3e38} gave all-NaN samples with OK."""
    request = pb.GenerateRequest(n=2, fixed={0: -3e38})
    err = rpc_error(lambda: wide_stub.Generate(request, timeout=TIMEOUT))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "the fixed values {0: -3e+38} give non-finite samples" in err.details()


def test_client_errors_are_one_log_line_without_traceback(
    stub: pb_grpc.SculptStub,
    wide_stub: pb_grpc.SculptStub,
    keyed_channel: grpc.Channel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13, finding 10: a client's errors must not flood the log with tracebacks."""
    calls = {
        "INVALID_ARGUMENT": ("Embed", lambda: stub.Embed(embed_request(batch(1), "bad\nname"))),
        "RESOURCE_EXHAUSTED": ("Generate", lambda: wide_stub.Generate(pb.GenerateRequest(n=256))),
        "UNAUTHENTICATED": (
            "GetInfo",
            lambda: pb_grpc.SculptStub(keyed_channel).GetInfo(pb.GetInfoRequest()),
        ),
    }
    for status, (rpc, call) in calls.items():
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            assert rpc_error(call).code().name == status
        records = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert len(records) == 1, [r.getMessage() for r in records]
        (record,) = records
        message = record.getMessage()
        assert record.name == "sculptserve.serving.grpc.server" and record.levelno == logging.INFO
        assert record.exc_info is None and "\n" not in message
        assert message.startswith(f"gRPC {rpc} from ipv4:127.0.0.1:") and f": {status}: " in message


# --- the real process --------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCULPT_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _read_line(stream: Any, timeout: float) -> str:
    """The next line of a pipe, or '' after ``timeout`` seconds (readline alone can hang)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return ""


def test_server_subprocess(bundle: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    with log_file.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sculptserve.serving.grpc.server",
                "--bundle",
                str(bundle),
                "--port=0",
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            line = _read_line(proc.stdout, timeout=30)
            assert line.startswith("sculpt gRPC listening on 127.0.0.1:"), (
                line + log_file.read_text()
            )
            port = int(line.rsplit(":", 1)[1])
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                x = batch(3, seed=5)
                z = array(
                    pb_grpc.SculptStub(ch).Embed(embed_request(x), timeout=TIMEOUT).embeddings
                )
                w_enc = toy_weights(INPUT_SHAPE, LATENT_DIM)[0]
                np.testing.assert_allclose(z, toy_encode(x, w_enc), atol=1e-5)
                health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)  # graceful: health NOT_SERVING, drain, exit 0
            assert proc.wait(timeout=20) == 0, log_file.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
