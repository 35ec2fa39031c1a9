"""The Open Inference Protocol's transport-free module (sculptserve.serving.oip): what REST and
gRPC share. Models and metadata from a toy bundle, tensor conversion, and every check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle, toy_encode, toy_weights

from sculptserve.serving.core import EmbeddingApp, ServiceLimits
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.oip import (
    DATATYPES,
    ModelNotFound,
    OipModels,
    array_from_bytes,
    array_from_values,
    datatype_of,
    server_metadata,
    tensor_bytes,
)

SHAPE = (1, 4, 4)
LATENT = 3


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingApp:
    bundle = make_bundle(tmp_path_factory.mktemp("oip") / "bundle", latent_dim=LATENT)
    app = EmbeddingApp.from_source(str(bundle), background_drift=False)
    yield app
    app.close()


@pytest.fixture(scope="module")
def models(app: EmbeddingApp) -> OipModels:
    return OipModels(app)


def test_metadata_of_the_encoder_and_the_decoder(models: OipModels) -> None:
    assert [m.name for m in models] == ["toy", "toy-decoder"]
    assert models.get("toy").metadata() == {
        "name": "toy",
        "versions": ["v1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 4, 4]}],
        "outputs": [{"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}],
    }
    decoder = models.get("toy-decoder", "v1").metadata()
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}]
    assert decoder["outputs"] == [{"name": "x_hat", "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
    assert server_metadata(["binary_tensor_data"])["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize(("name", "version"), [("nope", None), ("toy", "v2")])
def test_an_unknown_model_or_version_is_not_found(
    models: OipModels, name: str, version: str | None
) -> None:
    with pytest.raises(ModelNotFound, match=f"'{version or name}'"):
        models.get(name, version)


def test_bytes_become_an_array_without_a_copy() -> None:
    data = bytearray(np.arange(6, dtype="<f4").tobytes())
    arr = array_from_bytes("FP32", [2, 3], data)
    assert arr.shape == (2, 3) and np.shares_memory(arr, np.frombuffer(data, dtype="<f4"))
    np.testing.assert_array_equal(arr, np.arange(6).reshape(2, 3))
    assert bytes(tensor_bytes(arr)) == bytes(data)
    # big-endian in, little-endian bytes out
    assert bytes(tensor_bytes(arr.astype(">f4"))) == bytes(data)


def test_values_flat_or_nested_give_one_array() -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2) / 4
    flat = array_from_values("FP32", [2, 3, 2], x.ravel().tolist())
    nested = array_from_values("FP32", [2, 3, 2], x.tolist())
    assert flat.dtype == nested.dtype == np.float32
    np.testing.assert_array_equal(flat, x)
    np.testing.assert_array_equal(nested, x)
    # JSON integers are numbers; integers for an integer datatype keep their type
    assert array_from_values("FP32", [2], [1, 2]).dtype == np.float32
    assert array_from_values("INT64", [2], [1, 2]).dtype == np.dtype("<i8")
    with pytest.raises(PayloadError, match="INT64 must hold integers, got numbers"):
        array_from_values("INT64", [2], [1.5, 2])


def test_the_datatype_table_round_trips() -> None:
    for name, dtype in DATATYPES.items():
        assert datatype_of(dtype) == name
    with pytest.raises(ValueError, match="complex64"):
        datatype_of(np.complex64)


def test_encoder_infer_is_embed(app: EmbeddingApp, models: OipModels) -> None:
    x = np.random.default_rng(0).random((5, *SHAPE), dtype=np.float32)
    model = models.get("toy")
    tensor = model.input_from_bytes("x", "FP32", x.shape, x.tobytes())
    (out,) = model.infer([tensor])
    assert (out.name, out.datatype, out.shape) == ("z", "FP32", [5, LATENT])
    np.testing.assert_allclose(out.array, toy_encode(x, toy_weights(SHAPE, LATENT)[0]), atol=1e-6)
    np.testing.assert_array_equal(out.array, app.embed(x.tolist()).embeddings)
    (codes,) = model.infer([tensor], {"encoding": "uint8"}, ["z"])
    assert codes.datatype == "UINT8"
    np.testing.assert_array_equal(codes.array, app.embed(x, "uint8").embeddings)


def test_decoder_infer_is_decode(app: EmbeddingApp, models: OipModels) -> None:
    z = np.random.default_rng(1).normal(size=(4, LATENT)).astype(np.float32)
    model = models.get("toy-decoder")
    (out,) = model.infer([model.input_from_values("z", "FP32", [4, LATENT], z.tolist())])
    assert (out.name, out.shape) == ("x_hat", [4, *SHAPE])
    np.testing.assert_array_equal(out.array, app.decode(z).outputs)


X = np.zeros((2, *SHAPE), dtype=np.float32)


@pytest.mark.parametrize(
    ("call", "phrase"),
    [
        (lambda m: m.input_from_bytes("y", "FP32", [2, 1, 4, 4], X.tobytes()), "no input 'y'"),
        (lambda m: m.input_from_bytes("x", "FP64", [2, 1, 4, 4], X.tobytes()), "datatype FP64"),
        (lambda m: m.input_from_bytes("x", "FP32", [2, 16], X.tobytes()), "shape [2, 16]"),
        (lambda m: m.input_from_bytes("x", "FP32", [2, 1, 4, 5], X.tobytes()), "[2, 1, 4, 5]"),
        (lambda m: m.input_from_bytes("x", "FP32", [0, 1, 4, 4], b""), "batch is empty"),
        (lambda m: m.input_from_bytes("x", "FP32", [3, 1, 4, 4], X.tobytes()), "needs 192"),
        (lambda m: m.input_from_bytes("x", "FP32", [2, 1, 4, -4], X.tobytes()), "non-negative"),
        (lambda m: m.input_from_values("x", "FP32", [2, 1, 4, 4], [0.0] * 31), "needs 32"),
        (lambda m: m.input_from_values("x", "FP32", [2, 1, 4, 4], [True] * 32), "got booleans"),
        (lambda m: m.input_from_values("x", "FP32", [1, 1, 4, 4], [[0.0], [1, 2]]), "ragged"),
    ],
)
def test_bad_tensors_are_payload_errors(models: OipModels, call, phrase: str) -> None:
    with pytest.raises(PayloadError) as err:
        call(models.get("toy"))
    assert phrase in str(err.value)


@pytest.mark.parametrize(
    ("inputs", "parameters", "requested", "phrase"),
    [
        (["x", "x"], None, None, "takes the inputs ['x'], got ['x', 'x']"),
        ([], None, None, "got []"),
        (["x"], {"encodng": "uint8"}, None, "does not take the parameter 'encodng'"),
        (["x"], {"encoding": 8}, None, "must be a str"),
        (["x"], {"encoding": "int4"}, None, "unknown encoding"),
        (["x"], None, ["embedding"], "no output 'embedding'"),
    ],
)
def test_bad_requests_are_payload_errors(
    models: OipModels, inputs: list[str], parameters, requested, phrase: str
) -> None:
    model = models.get("toy")
    tensors = [model.input_from_bytes("x", "FP32", X.shape, X.tobytes()) for _ in inputs]
    with pytest.raises(PayloadError, match=re.escape(phrase)):
        model.infer(tensors, parameters, requested)


def test_nan_and_the_item_limit_are_the_cores_checks(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", latent_dim=LATENT)
    app = EmbeddingApp.from_source(
        str(bundle), background_drift=False, limits=ServiceLimits(max_items=2)
    )
    try:
        model = OipModels(app).get("toy")
        x = np.zeros((2, *SHAPE), dtype=np.float32)
        x[1, 0, 2, 3] = np.nan
        with pytest.raises(PayloadError, match=r"item 1: holds NaN at index \[0, 2, 3\]"):
            model.infer([model.input_from_bytes("x", "FP32", x.shape, x.tobytes())])
        big = np.zeros((3, *SHAPE), dtype=np.float32)
        with pytest.raises(PayloadError, match="too many items: 3, at most 2"):
            model.infer([model.input_from_bytes("x", "FP32", big.shape, big.tobytes())])
    finally:
        app.close()
