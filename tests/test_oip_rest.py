"""The Open Inference Protocol (KServe v2) over REST, and the binary (.npy) fast path of /embed
(issue 14, items 1-REST and 2).

Two halves:

- the real client: ``tritonclient.http`` (binary tensor data) against one ``sculpt serve``
  subprocess with an API key and micro-batching on: server and models ready, metadata, infer
  equal to ``/embed`` to 1e-6, the decoder, bad tensors answered 400, the key enforced on the
  v2 routes while health stays open, one drift monitor for both APIs;
- in-process (starlette's TestClient over the ASGI app): every bad-tensor case with its error
  body, the .npy round trip on /embed (equal to JSON to 1e-6), the API key on the v2 routes,
  readiness, and that binary tensors reach ONNX Runtime without a copy.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from bundle_factory import edit_manifest, make_bundle, toy_decode, toy_encode, toy_weights
from starlette.testclient import TestClient
from test_serve_subprocess import free_port
from test_service import _client, _error
from tritonclient.utils import InferenceServerException

from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.http.api import RestApi, RestFront

SHAPE = (1, 4, 4)
LATENT = 3
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient's infer writes its
    Inference-Header-Content-Length into the dict it is given."""
    return dict(AUTH)


W_ENC, W_DEC = toy_weights(SHAPE, LATENT)
NPY = "application/x-npy"


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# =============================================================================================
# tritonclient against `sculpt serve`
# =============================================================================================


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `sculpt serve` (REST and gRPC, an API key, micro-batching on): its host:port."""
    root = tmp_path_factory.mktemp("oip")
    bundle = make_bundle(root / "bundle", latent_dim=LATENT)
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")),
        "BENTOML_DO_NOT_TRACK": "1",
        "SCULPT_API_KEY": KEY,
        "SCULPT_MICROBATCH": "on",  # OIP requests go through the batcher like /embed's
        "SCULPT_SHUTDOWN_DELAY_S": "0",
    }
    log = root / "serve.log"
    command = [sys.executable, "-m", "sculptserve.cli", "serve", str(bundle)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--port", str(port), "--grpc-port", str(grpc_port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"127.0.0.1:{port}"
    client = triton.InferenceServerClient(url)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if client.is_server_ready():
                break
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"sculpt serve did not start:\n{log.read_text()}")
    client.close()
    yield url
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def triton_client(server: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def rest(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server}", headers=_auth(), timeout=30) as client:
        yield client


def _infer(
    client: triton.InferenceServerClient,
    x: np.ndarray,
    *,
    model: str = "toy",
    name: str = "x",
    datatype: str = "FP32",
    binary: bool = True,
    **kwargs: Any,
) -> triton.InferResult:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return client.infer(model, [tensor], headers=_auth(), **kwargs)


def test_server_and_models_are_ready(triton_client: triton.InferenceServerClient) -> None:
    # health without the key: probes have none
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("toy", headers=_auth())
    assert triton_client.is_model_ready("toy-decoder", "v1", headers=_auth())
    assert not triton_client.is_model_ready("nope", headers=_auth())
    assert not triton_client.is_model_ready("toy", "v2", headers=_auth())
    meta = triton_client.get_server_metadata(headers=_auth())
    assert meta["name"] == "sculptserve" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.get_model_metadata("toy", headers=_auth()) == {
        "name": "toy",
        "versions": ["v1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *SHAPE]}],
        "outputs": [{"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}],
    }
    decoder = triton_client.get_model_metadata("toy-decoder", "v1", headers=_auth())
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}]
    assert decoder["outputs"] == [{"name": "x_hat", "datatype": "FP32", "shape": [-1, *SHAPE]}]


def test_binary_infer_equals_embed(
    triton_client: triton.InferenceServerClient, rest: httpx.Client
) -> None:
    x = _x(7)
    embed = rest.post("/embed", json={"inputs": x.tolist()})
    assert embed.status_code == 200, embed.text
    expected = np.asarray(embed.json()["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(expected, toy_encode(x, W_ENC), atol=1e-6)

    # binary in, binary out (no outputs named: tritonclient asks binary_data_output)
    result = _infer(triton_client, x)
    out = result.get_output("z")
    assert out["datatype"] == "FP32" and out["shape"] == [7, LATENT]
    assert out["parameters"] == {"binary_data_size": 7 * LATENT * 4}
    np.testing.assert_allclose(result.as_numpy("z"), expected, rtol=0, atol=1e-6)
    # JSON in, JSON out
    result = _infer(
        triton_client, x, binary=False, outputs=[triton.InferRequestedOutput("z", False)]
    )
    assert "data" in result.get_output("z")
    np.testing.assert_allclose(result.as_numpy("z"), expected, rtol=0, atol=1e-6)


def test_encoding_parameter_is_embeds(
    triton_client: triton.InferenceServerClient, rest: httpx.Client
) -> None:
    x = _x(5, seed=1)
    for encoding, datatype in (("uint8", "UINT8"), ("int8", "INT8"), ("float16", "FP16")):
        embed = rest.post("/embed", json={"inputs": x.tolist(), "encoding": encoding})
        result = _infer(triton_client, x, parameters={"encoding": encoding})
        assert result.get_output("z")["datatype"] == datatype
        np.testing.assert_array_equal(result.as_numpy("z"), embed.json()["embeddings"])


def test_decoder_infer_reconstructs(
    triton_client: triton.InferenceServerClient, rest: httpx.Client
) -> None:
    """encoder then decoder over OIP == /reconstruct == the toy model in numpy."""
    x = _x(4, seed=2)
    z = _infer(triton_client, x).as_numpy("z")
    x_hat = _infer(triton_client, z, model="toy-decoder", name="z").as_numpy("x_hat")
    assert x_hat.shape == (4, *SHAPE)
    np.testing.assert_allclose(x_hat, toy_decode(toy_encode(x, W_ENC), W_DEC, SHAPE), atol=1e-6)
    reconstruct = rest.post("/reconstruct", json={"inputs": x.tolist()}).json()["outputs"]
    np.testing.assert_allclose(x_hat, reconstruct, rtol=0, atol=1e-6)


def _nan_batch() -> np.ndarray:
    x = _x(2)
    x[1, 0, 3, 2] = np.nan
    return x


@pytest.mark.parametrize(
    ("x", "kwargs", "phrase"),
    [
        (_x(2).astype(np.float64), {"datatype": "FP64"}, "datatype FP64, expected FP32"),
        (_x(2).reshape(2, 16), {}, "shape [2, 16], expected [-1, 1, 4, 4]"),
        (_x(2), {"name": "input"}, "no input 'input'"),
        (_nan_batch(), {}, "item 1: holds NaN at index [0, 3, 2]"),
        (_nan_batch(), {"binary": False}, "item 1: holds NaN at index [0, 3, 2]"),
        (_x(2), {"model": "toy-decoder", "name": "z"}, "shape [2, 1, 4, 4], expected [-1, 3]"),
        (_x(2), {"parameters": {"encoding": "int4"}}, "unknown encoding 'int4'"),
    ],
)
def test_bad_tensors_are_answered_400(
    triton_client: triton.InferenceServerClient, x: np.ndarray, kwargs: dict, phrase: str
) -> None:
    with pytest.raises(InferenceServerException) as err:
        _infer(triton_client, x, **kwargs)
    assert err.value.status() == "400"
    assert phrase in err.value.message()


def test_unknown_model_is_404(triton_client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        _infer(triton_client, _x(1), model="nope")
    assert err.value.status() == "404" and "no model 'nope'" in err.value.message()


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_server_metadata(),
        lambda c: c.get_model_metadata("toy"),
        lambda c: c.is_model_ready("toy"),
        lambda c: c.infer("toy", [_input(_x(1))]),
        lambda c: c.infer("toy", [_input(_x(1))], headers={"Authorization": "Bearer wrong"}),
    ],
)
def test_api_key_is_enforced_on_v2_routes(
    triton_client: triton.InferenceServerClient, call: Callable[[Any], Any]
) -> None:
    try:
        answer = call(triton_client)
    except InferenceServerException as exc:
        assert exc.status() == "401", exc
        assert "API key" in exc.message()
    else:  # is_model_ready answers a bool: not ready without the key
        assert answer is False
    # health stays open
    assert triton_client.is_server_live() and triton_client.is_server_ready()


def _input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_one_drift_monitor_for_both_apis(
    triton_client: triton.InferenceServerClient, rest: httpx.Client
) -> None:
    before = rest.get("/drift").json()["embeddings_seen"]
    _infer(triton_client, _x(6, seed=3))
    rest.post("/embed", json={"inputs": _x(2).tolist()})
    _infer(triton_client, np.zeros((3, LATENT), np.float32), model="toy-decoder", name="z")
    assert rest.get("/drift").json()["embeddings_seen"] == before + 8  # decoding is not embedding


def test_embed_takes_and_answers_npy_for_real(rest: httpx.Client) -> None:
    x = _x(5, seed=4)
    resp = rest.post("/embed", content=_npy(x), headers={"content-type": NPY, "accept": NPY})
    assert resp.status_code == 200 and resp.headers["content-type"] == NPY, resp.text
    z = np.load(io.BytesIO(resp.content), allow_pickle=False)
    json_z = rest.post("/embed", json={"inputs": x.tolist()}).json()["embeddings"]
    np.testing.assert_allclose(z, json_z, rtol=0, atol=1e-6)


# =============================================================================================
# In-process: the ASGI app
# =============================================================================================


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("oip-asgi") / "bundle", latent_dim=LATENT)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, bundle_dir: Path) -> Iterator[TestClient]:
    with _client(monkeypatch, bundle_dir, SCULPT_REQUEST_MAX_ITEMS="8") as c:
        yield c


def _tensor(name: str = "x", shape: Any = (2, *SHAPE), datatype: str = "FP32", **extra: Any):
    return {"name": name, "shape": list(shape), "datatype": datatype, **extra}


def _binary_body(
    x: np.ndarray, header: dict[str, Any] | None = None, size: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: the JSON header, then x's bytes; and its headers."""
    params = {"binary_data_size": x.nbytes if size is None else size}
    header = header or {"inputs": [_tensor(shape=x.shape, parameters=params)]}
    head = json.dumps(header).encode()
    return head + x.tobytes(), {"inference-header-content-length": str(len(head))}


def _post_binary(c: TestClient, x: np.ndarray, model: str = "toy", **kwargs: Any) -> httpx.Response:
    body, headers = _binary_body(x, **kwargs)
    return c.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def _post_json(body: Any, model: str = "toy") -> Callable[[TestClient], httpx.Response]:
    return lambda c: c.post(f"/v2/models/{model}/infer", json=body)


X2 = _x(2)
DATA = X2.ravel().tolist()

BAD_TENSORS: list[tuple[str, Callable[[TestClient], httpx.Response], str, str]] = [
    (
        "wrong datatype",
        _post_json({"inputs": [_tensor(datatype="FP64", data=DATA)]}),
        "invalid_input",
        "input 'x' has datatype FP64, expected FP32",
    ),
    (
        "unknown datatype",
        _post_json({"inputs": [_tensor(datatype="FLOAT", data=DATA)]}),
        "invalid_input",
        "datatype FLOAT, expected FP32",
    ),
    (
        "wrong rank",
        _post_json({"inputs": [_tensor(shape=(2, 16), data=DATA)]}),
        "invalid_input",
        "shape [2, 16], expected [-1, 1, 4, 4]",
    ),
    (
        "wrong dimension",
        _post_json({"inputs": [_tensor(shape=(2, 1, 2, 8), data=DATA)]}),
        "invalid_input",
        "shape [2, 1, 2, 8], expected [-1, 1, 4, 4]",
    ),
    (
        "negative dimension",
        _post_json({"inputs": [_tensor(shape=(-2, 1, 4, 4), data=DATA)]}),
        "invalid_input",
        "must be a list of non-negative integers",
    ),
    (
        "empty batch",
        _post_json({"inputs": [_tensor(shape=(0, *SHAPE), data=[])]}),
        "invalid_input",
        "batch is empty",
    ),
    (
        "JSON value count",
        _post_json({"inputs": [_tensor(data=DATA[:-1])]}),
        "invalid_input",
        "31 values of data, but shape [2, 1, 4, 4] needs 32",
    ),
    (
        "JSON booleans",
        _post_json({"inputs": [_tensor(data=[0.5] * 31 + [True])]}),
        "invalid_input",
        "data[31]: Input should be a valid number",
    ),
    (
        "JSON strings",
        _post_json({"inputs": [_tensor(data=["0.5"] * 32)]}),
        "invalid_input",
        "data[0]: Input should be a valid number",
    ),
    (
        "JSON ragged",
        _post_json({"inputs": [_tensor(data=[DATA[:16], DATA[16:31]])]}),
        "invalid_input",
        "ragged",
    ),
    (
        "JSON NaN",
        lambda c: c.post(
            "/v2/models/toy/infer",
            content=json.dumps({"inputs": [_tensor(data=[float("nan"), *DATA[1:]])]}),
            headers={"content-type": "application/json"},
        ),
        "invalid_input",
        "item 0: holds NaN at index [0, 0, 0]",
    ),
    (
        "binary NaN",
        lambda c: _post_binary(
            c, np.where(np.arange(32).reshape(X2.shape) == 20, np.nan, X2).astype(np.float32)
        ),
        "invalid_input",
        "item 1: holds NaN at index [0, 1, 0]",
    ),
    (
        "binary_data_size is not the shape's",
        lambda c: _post_binary(
            c, X2[:1], header={"inputs": [_tensor(parameters={"binary_data_size": 64})]}
        ),
        "invalid_input",
        "64 bytes of data, but FP32 [2, 1, 4, 4] needs 128",
    ),
    (
        "binary_data_size beyond the body",
        lambda c: _post_binary(c, X2, size=X2.nbytes + 4),
        "invalid_input",
        "declares 132 bytes at offset 0, but 128 bytes follow the JSON header",
    ),
    (
        "bytes left over",
        lambda c: _post_binary(
            c,
            X2,
            header={"inputs": [_tensor(shape=(1, *SHAPE), parameters={"binary_data_size": 64})]},
        ),
        "invalid_input",
        "128 bytes follow the JSON header but the inputs' binary_data_size add up to 64",
    ),
    (
        "header length beyond the body",
        lambda c: c.post(
            "/v2/models/toy/infer",
            content=b"{}",
            headers={"inference-header-content-length": "3"},
        ),
        "validation_error",
        "inference-header-content-length is 3 but the body has 2 bytes",
    ),
    (
        "header length not a number",
        lambda c: c.post(
            "/v2/models/toy/infer",
            content=b"{}",
            headers={"inference-header-content-length": "-1"},
        ),
        "validation_error",
        "must be a non-negative integer, got '-1'",
    ),
    (
        "both data and binary_data_size",
        lambda c: _post_binary(
            c,
            X2,
            header={"inputs": [_tensor(parameters={"binary_data_size": 128}, data=DATA)]},
        ),
        "invalid_input",
        "has both data and binary_data_size",
    ),
    (
        "no data",
        _post_json({"inputs": [_tensor()]}),
        "invalid_input",
        "input 'x' has no data",
    ),
    (
        "unknown input",
        _post_json({"inputs": [_tensor(name="y", data=DATA)]}),
        "invalid_input",
        "model 'toy' has no input 'y'",
    ),
    (
        "input twice",
        _post_json({"inputs": [_tensor(data=DATA), _tensor(data=DATA)]}),
        "invalid_input",
        "takes the inputs ['x'], got ['x', 'x']",
    ),
    (
        "no inputs",
        _post_json({"inputs": []}),
        "validation_error",
        "inputs: List should have at least 1 item",
    ),
    (
        "unknown field",
        _post_json({"inputs": [_tensor(data=DATA)], "input": []}),
        "validation_error",
        "input: Extra inputs are not permitted",
    ),
    (
        "unknown parameter",
        _post_json({"inputs": [_tensor(data=DATA)], "parameters": {"priority": 1}}),
        "invalid_input",
        "does not take the parameter 'priority'",
    ),
    (
        "decoder has no encoding",
        _post_json(
            {
                "inputs": [_tensor("z", (1, LATENT), data=[0.0] * LATENT)],
                "parameters": {"encoding": "uint8"},
            },
            model="toy-decoder",
        ),
        "invalid_input",
        "model 'toy-decoder' does not take the parameter 'encoding' (it takes: none)",
    ),
    (
        "binary_data_output not a bool",
        _post_json({"inputs": [_tensor(data=DATA)], "parameters": {"binary_data_output": 1}}),
        "invalid_input",
        "'binary_data_output' must be a bool",
    ),
    (
        "unknown output",
        _post_json({"inputs": [_tensor(data=DATA)], "outputs": [{"name": "embedding"}]}),
        "invalid_input",
        "model 'toy' has no output 'embedding'",
    ),
    (
        "classification asked",
        _post_json(
            {
                "inputs": [_tensor(data=DATA)],
                "outputs": [{"name": "z", "parameters": {"classification": 2}}],
            }
        ),
        "validation_error",
        "classification: Extra inputs are not permitted",
    ),
    (
        "over the item limit",
        lambda c: _post_binary(c, _x(9)),
        "invalid_input",
        "too many items: 9, at most 8 per request",
    ),
    (
        "invalid JSON",
        lambda c: c.post(
            "/v2/models/toy/infer", content=b"{bad", headers={"content-type": "application/json"}
        ),
        "invalid_json",
        "the JSON header is not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("request_", "error_type", "phrase"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_TENSORS],
)
def test_bad_tensors_are_400_with_the_error_body(
    client: TestClient, request_: Callable, error_type: str, phrase: str
) -> None:
    resp = request_(client)
    assert resp.status_code == 400, resp.text
    _error(resp)  # {"error": str, "error_type": known}, nothing else
    assert resp.json()["error_type"] == error_type
    assert phrase in resp.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type", "phrase"),
    [
        ("GET", "/v2/models/nope", 404, "not_found", "no model 'nope'; models: 'toy', 'toy-"),
        ("GET", "/v2/models/toy/versions/v9/ready", 404, "not_found", "no version 'v9'"),
        ("POST", "/v2/models/nope/infer", 404, "not_found", "no model 'nope'"),
        ("GET", "/v2/repository/index", 404, "not_found", "no route /v2/repository/index"),
        ("GET", "/v2/models/toy/infer", 405, "method_not_allowed", "answers POST, not GET"),
        ("POST", "/v2/health/ready", 405, "method_not_allowed", "answers GET, HEAD"),
    ],
)
def test_routes_not_here(
    client: TestClient, method: str, path: str, status: int, error_type: str, phrase: str
) -> None:
    resp = client.request(method, path)
    assert resp.status_code == status, resp.text
    _error(resp)
    assert resp.json()["error_type"] == error_type and phrase in resp.json()["error"]


@pytest.mark.parametrize(
    ("headers", "phrase"),
    [
        ({"content-type": "text/plain"}, "infer takes Content-Type application/json or"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, "not supported"),
    ],
)
def test_other_bodies_are_415(client: TestClient, headers: dict[str, str], phrase: str) -> None:
    body = json.dumps({"inputs": [_tensor(data=DATA)]})
    resp = client.post("/v2/models/toy/infer", content=body, headers=headers)
    assert resp.status_code == 415 and phrase in _error(resp)


def test_infer_json_and_binary_agree_with_embed(client: TestClient) -> None:
    x = _x(3, seed=5)
    embed = np.asarray(client.post("/embed", json={"inputs": x.tolist()}).json()["embeddings"])
    # JSON in, JSON out, with an id echoed and the data nested instead of flat
    resp = client.post(
        "/v2/models/toy/versions/v1/infer",
        json={"id": "r-1", "inputs": [_tensor(shape=x.shape, data=x.tolist())]},
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["model_name"] == "toy" and body["model_version"] == "v1" and body["id"] == "r-1"
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("z", "FP32", [3, LATENT])
    np.testing.assert_allclose(np.reshape(out["data"], (3, LATENT)), embed, rtol=0, atol=1e-6)
    # binary in; one output asked binary: the header's length, then its bytes
    header = {
        "inputs": [_tensor(shape=x.shape, parameters={"binary_data_size": x.nbytes})],
        "outputs": [{"name": "z", "parameters": {"binary_data": True}}],
    }
    resp = _post_binary(client, x, header=header)
    assert resp.headers["content-type"] == "application/octet-stream"
    length = int(resp.headers["inference-header-content-length"])
    head = json.loads(resp.content[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 3 * LATENT * 4}
    z = np.frombuffer(resp.content[length:], dtype="<f4").reshape(3, LATENT)
    np.testing.assert_allclose(z, embed, rtol=0, atol=1e-6)
    # binary_data_output asks every output binary; an output's own false wins
    header["parameters"] = {"binary_data_output": True}
    header["outputs"] = [{"name": "z", "parameters": {"binary_data": False}}]
    resp = _post_binary(client, x, header=header)
    assert "inference-header-content-length" not in resp.headers
    np.testing.assert_allclose(resp.json()["outputs"][0]["data"], embed.ravel(), atol=1e-6)


def test_health_is_open_and_the_rest_of_v2_needs_the_key(
    monkeypatch: pytest.MonkeyPatch, bundle_dir: Path
) -> None:
    body, headers = _binary_body(X2)
    with _client(monkeypatch, bundle_dir, SCULPT_API_KEY=KEY) as c:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200, path
        calls = [
            lambda h: c.get("/v2", headers=h),
            lambda h: c.get("/v2/models/toy", headers=h),
            lambda h: c.get("/v2/models/toy-decoder/versions/v1/ready", headers=h),
            lambda h: c.post("/v2/models/toy/infer", content=body, headers={**headers, **h}),
            lambda h: c.post("/v2/models/nope/infer", content=body, headers={**headers, **h}),
        ]
        for call in calls:
            resp = call({})
            assert resp.status_code == 401 and "API key" in _error(resp)
            assert call({"Authorization": "Bearer nope"}).status_code == 401
        assert [call(AUTH).status_code for call in calls] == [200, 200, 200, 200, 404]


def test_readiness_follows_the_service(tmp_path: Path, bundle_dir: Path) -> None:
    """/v2/health/ready and model readiness answer the service's readiness (a drain turns it
    off before the process stops); liveness stays."""
    app = EmbeddingApp.from_source(str(bundle_dir), background_drift=False)
    ready = [True]
    api = RestApi(app, threads=1, ready=lambda: ready[0])

    async def bentoml(scope: Any, receive: Any, send: Any) -> None:  # never reached here
        raise AssertionError(scope["path"])

    c = TestClient(RestFront(bentoml, rest_api=lambda: api))  # no lifespan: no BentoML
    try:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2/models/toy/ready").json() == {"name": "toy", "ready": True}
        ready[0] = False
        for path in ("/v2/health/ready", "/v2/models/toy/ready"):
            resp = c.get(path)
            assert resp.status_code == 503 and "not ready" in _error(resp)
        assert c.get("/v2/health/live").json() == {"live": True}
    finally:
        app.close()


def _base(array: np.ndarray) -> Any:
    """What an array's memory belongs to (the end of its chain of views and memoryviews)."""
    owner: Any = array
    while True:
        if isinstance(owner, np.ndarray) and owner.base is not None:
            owner = owner.base
        elif isinstance(owner, memoryview):
            owner = owner.obj
        else:
            return owner


def test_binary_tensors_reach_onnx_runtime_without_a_copy(
    monkeypatch: pytest.MonkeyPatch, client: TestClient
) -> None:
    """Identity normalization: the ORT input is a view of the request's own bytes, for an OIP
    binary tensor and for an .npy body."""
    service_app = _service_app(client)
    seen: list[np.ndarray] = []
    encode = service_app.runtime.encode
    monkeypatch.setattr(service_app.runtime, "encode", lambda x: (seen.append(x), encode(x))[1])
    assert _post_binary(client, X2).status_code == 200
    assert client.post("/embed", content=_npy(X2), headers={"content-type": NPY}).is_success
    assert client.post("/embed", json={"inputs": X2.tolist()}).is_success
    assert [type(_base(x)) for x in seen] == [bytes, bytes, np.ndarray]
    for x in seen:
        np.testing.assert_array_equal(x, X2)


def _service_app(client: TestClient) -> EmbeddingApp:
    import bentoml

    return bentoml.get_current_service().app


# -- /embed with .npy ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["float32", "float16", "uint8", "int8"])
def test_embed_npy_round_trip_equals_json(client: TestClient, encoding: str) -> None:
    x = _x(6, seed=6)
    as_json = client.post("/embed", json={"inputs": x.tolist(), "encoding": encoding})
    expected = np.asarray(as_json.json()["embeddings"])
    npy_in = client.post(
        f"/embed?encoding={encoding}", content=_npy(x), headers={"content-type": NPY}
    )
    assert npy_in.status_code == 200, npy_in.text
    assert npy_in.json()["encoding"] == encoding
    np.testing.assert_allclose(npy_in.json()["embeddings"], expected, rtol=0, atol=1e-6)
    for resp in (
        client.post(
            f"/embed?encoding={encoding}",
            content=_npy(x),
            headers={"content-type": NPY, "accept": NPY},
        ),
        client.post(
            "/embed",
            json={"inputs": x.tolist(), "encoding": encoding},
            headers={"accept": f"text/html;q=0.5, {NPY}"},
        ),
    ):
        assert resp.status_code == 200 and resp.headers["content-type"] == NPY
        z = np.load(io.BytesIO(resp.content), allow_pickle=False)
        assert z.dtype == np.dtype(encoding) and z.shape == (6, LATENT)
        np.testing.assert_allclose(z, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(_x(3, seed=7)),
        _x(3, seed=7).astype(np.float64),
        _x(3, seed=7).astype(">f4"),
    ],
    ids=["fortran-order", "float64", "big-endian"],
)
def test_embed_npy_takes_other_layouts_and_dtypes(client: TestClient, array: np.ndarray) -> None:
    resp = client.post("/embed", content=_npy(array), headers={"content-type": NPY})
    assert resp.status_code == 200, resp.text
    expected = toy_encode(_x(3, seed=7), W_ENC)
    np.testing.assert_allclose(resp.json()["embeddings"], expected, rtol=0, atol=1e-6)


def test_embed_npy_applies_the_bundles_normalization(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not the identity: the .npy fast path normalizes like the JSON path (float64 pass)."""
    bundle = make_bundle(tmp_path / "norm", latent_dim=LATENT)
    edit_manifest(bundle, lambda m: m["input"]["normalization"].update(shift=0.25, scale=2.0))
    x = _x(4, seed=8) * 255
    with _client(monkeypatch, bundle) as c:
        via_json = c.post("/embed", json={"inputs": x.tolist()}).json()["embeddings"]
        via_npy = c.post("/embed", content=_npy(x), headers={"content-type": NPY}).json()
    np.testing.assert_allclose(via_npy["embeddings"], via_json, rtol=0, atol=1e-6)
    np.testing.assert_allclose(via_json, toy_encode((x - 0.25) / 2.0, W_ENC), atol=1e-4)


class _Bomb:
    """Unpickling this would write a file: proof that a body is never unpickled."""

    path = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.path).write_text, ("unpickled",))


def _pickled_npy(tmp_path: Path) -> bytes:
    _Bomb.path = str(tmp_path / "marker")
    buf = io.BytesIO()
    np.save(buf, np.array([_Bomb()], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "query", "phrase"),
    [
        (_pickled_npy, "", "npy dtype |O is not a plain numeric type"),
        (lambda _: _npy(np.array(["a", "b"])), "", "npy dtype <U1 is not a plain numeric type"),
        (lambda _: _npy(np.zeros(2, [("a", "<f4")])), "", "is not a plain numeric type"),
        (lambda _: _npy(X2)[:-1], "", "has 255 bytes but its header"),
        (lambda _: _npy(X2) + b"\0", "", "has 257 bytes but its header"),
        (lambda _: b"not an npy", "", "the body is not an .npy file"),
        (lambda _: _npy(X2[0]), "", "one example without a batch axis"),
        (lambda _: _npy(X2.astype(bool)), "", "input must hold real numbers, got dtype bool"),
        (lambda _: _npy(_x(9)), "", "too many items: 9, at most 8"),
        (lambda _: _npy(np.full((1, *SHAPE), np.inf, "<f4")), "", "holds Inf at index [0, 0, 0]"),
        (lambda _: _npy(X2), "?encoding=int4", "unknown encoding 'int4'"),
        (lambda _: _npy(X2), "?encodng=uint8", "query parameter 'encodng' not taken"),
        (lambda _: _npy(X2), "?encoding=uint8&encoding=int8", "?encoding= (once)"),
    ],
)
def test_bad_npy_bodies_are_400(
    client: TestClient, tmp_path: Path, body: Callable[[Path], bytes], query: str, phrase: str
) -> None:
    resp = client.post(f"/embed{query}", content=body(tmp_path), headers={"content-type": NPY})
    assert resp.status_code == 400, resp.text
    assert phrase in resp.json()["error"], resp.json()
    _error(resp)
    assert not (tmp_path / "marker").exists()


def test_a_json_body_takes_no_query(client: TestClient) -> None:
    resp = client.post("/embed?encoding=uint8", json={"inputs": X2.tolist()})
    assert resp.status_code == 400
    assert "options go in the JSON body" in _error(resp)


def test_embed_names_both_media_types_when_refusing_another(client: TestClient) -> None:
    resp = client.post("/embed", content=b"x", headers={"content-type": "text/csv"})
    assert resp.status_code == 415
    assert "takes Content-Type application/json or application/x-npy, got text/csv" in _error(resp)


def test_docs_json_lists_the_v2_routes_and_the_npy_forms(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    v2 = {path for path in spec["paths"] if path.startswith("/v2")}
    assert v2 == {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        *(
            f"/v2/models/{{name}}{version}{action}"
            for version in ("", "/versions/{version}")
            for action in ("", "/ready", "/infer")
        ),
    }
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert {"400", "404", "413", "415"} <= set(infer["responses"])
    assert {"InferRequest", "InferResponse", "ModelMetadata"} <= set(spec["components"]["schemas"])
    embed = spec["paths"]["/embed"]["post"]
    assert set(embed["requestBody"]["content"]) == {"application/json", NPY}
    assert set(embed["responses"]["200"]["content"]) == {"application/json", NPY}
