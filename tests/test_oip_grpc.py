"""The Open Inference Protocol over gRPC, driven by the real tritonclient.grpc.

The server side is the service as deployed: ``SculptService`` in-process (starlette's
TestClient over ``to_asgi()``) with ``SCULPT_GRPC_PORT`` set, so the gRPC server runs in the
worker beside REST and shares its app; infer results are compared with ``/embed`` of the same
service, and ``/metrics`` is read from it. A second server (``GrpcThread``) has an API key, the
micro-batcher on and a private metrics registry.

tritonclient.grpc runs in a child process (tests/triton_worker.py): its stubs and the server's
define the same protobuf package, which one process cannot hold twice.
"""

from __future__ import annotations

import importlib.util
import json
import math
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from array_json import decode, encode
from bundle_factory import make_bundle, toy_decode, toy_encode, toy_weights
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from test_deploy_support import free_port
from test_service import fresh_asgi_app

import sculptserve
from sculptserve.bundle.load import load_bundle
from sculptserve.serving import oip
from sculptserve.serving.batching import BatchConfig
from sculptserve.serving.core import EmbeddingApp, ServiceLimits
from sculptserve.serving.grpc import grpc_predict_v2_pb2 as pb
from sculptserve.serving.grpc import grpc_predict_v2_pb2_grpc as oip_grpc
from sculptserve.serving.grpc.errors import RESPONSE_FRAMING_BYTES
from sculptserve.serving.grpc.thread import GrpcThread

# find_spec, not importorskip: importing tritonclient.grpc here would clash with the server
if importlib.util.find_spec("tritonclient") is None:
    pytest.skip("tritonclient is not installed (the dev extra has it)", allow_module_level=True)

SHAPE = (1, 4, 4)
LATENT = 3
NAME, DECODER = "toy", "toy-decoder"
KEY = "oip-secret"
MAX_ITEMS = 16
TIMEOUT = 30.0  # per worker answer
WORKER = Path(__file__).resolve().parent / "triton_worker.py"
INVALID = "StatusCode.INVALID_ARGUMENT"


# --- the tritonclient process ---------------------------------------------------------------


class Triton:
    """tritonclient.grpc in tests/triton_worker.py, one request at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        assert ready, f"tritonclient gave no answer in {TIMEOUT:.0f}s to {request['op']}"
        line = self.proc.stdout.readline()
        assert line, f"the tritonclient process died (exit {self.proc.wait()})"
        answer = json.loads(line)
        assert "crash" not in answer, answer["crash"]
        return answer

    def result(self, **request: Any) -> Any:
        answer = self.ask(**request)
        assert "error" not in answer, answer["error"]
        return answer["result"]

    def error(self, **request: Any) -> dict[str, str]:
        answer = self.ask(**request)
        assert "error" in answer, f"expected an error, got {answer}"
        return answer["error"]

    def call(self, url: str, method: str, **kwargs: Any) -> Any:
        return self.result(op="call", url=url, method=method, kwargs=kwargs)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def infer_request(
    url: str,
    x: np.ndarray,
    model: str = NAME,
    *,
    name: str = "x",
    datatype: str = "FP32",
    **options: Any,
) -> dict[str, Any]:
    tensor = {"name": name, "datatype": datatype, "array": encode(x)}
    if "shape" in options:
        tensor["shape"] = options.pop("shape")
    return {"op": "infer", "url": url, "model": model, "inputs": [tensor], **options}


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("oip") / "toy", latent_dim=LATENT, input_shape=SHAPE)


@pytest.fixture(scope="module")
def triton() -> Iterator[Triton]:
    worker = Triton()
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def service(bundle: Path) -> Iterator[tuple[TestClient, str]]:
    """The BentoML service with its in-worker gRPC server: (REST client, gRPC address)."""
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SCULPT_BUNDLE", str(bundle))
        env.setenv("SCULPT_GRPC_PORT", str(port))
        env.setenv("SCULPT_GRPC_HOST", "127.0.0.1")
        env.delenv("SCULPT_API_KEY", raising=False)
        with TestClient(fresh_asgi_app()) as client:
            yield client, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def url(service: tuple[TestClient, str]) -> str:
    return service[1]


@pytest.fixture(scope="module")
def rest(service: tuple[TestClient, str]) -> TestClient:
    return service[0]


@pytest.fixture(scope="module")
def keyed_app(bundle: Path) -> Iterator[EmbeddingApp]:
    app = EmbeddingApp(
        load_bundle(bundle),
        limits=ServiceLimits(max_items=MAX_ITEMS),
        metrics_registry=CollectorRegistry(),
        background_drift=False,
        batch_config=BatchConfig(enabled=True),
    )
    yield app
    app.close()


@pytest.fixture(scope="module")
def keyed(keyed_app: EmbeddingApp) -> Iterator[str]:
    """A GrpcThread with an API key, the micro-batcher on and a private registry."""
    server = GrpcThread(keyed_app, 0, api_key=KEY)
    yield f"127.0.0.1:{server.port}"
    server.stop()


AUTH = {"authorization": f"Bearer {KEY}"}


# --- health and metadata ---------------------------------------------------------------------


def test_server_and_models_are_ready(triton: Triton, url: str) -> None:
    assert triton.call(url, "is_server_live") is True
    assert triton.call(url, "is_server_ready") is True
    for model in (NAME, DECODER):
        assert triton.call(url, "is_model_ready", model_name=model) is True
        assert triton.call(url, "is_model_ready", model_name=model, model_version="v1") is True
    # the spec's answer for an unknown model or version: not ready, no error
    assert triton.call(url, "is_model_ready", model_name="nope") is False
    assert triton.call(url, "is_model_ready", model_name=NAME, model_version="v2") is False


def test_server_metadata(triton: Triton, url: str) -> None:
    meta = triton.call(url, "get_server_metadata", as_json=True)
    # no extensions: raw contents are gRPC's own (REST lists binary_tensor_data); protobuf's
    # JSON form leaves the empty list out
    assert meta == {"name": "sculptserve", "version": sculptserve.__version__}


def test_model_metadata_of_both_models(triton: Triton, url: str) -> None:
    encoder = triton.call(url, "get_model_metadata", model_name=NAME, as_json=True)
    assert encoder == {
        "name": NAME,
        "versions": ["v1"],
        "platform": "onnxruntime_onnx",
        # tritonclient's JSON form spells int64 shapes as strings (protobuf's JSON mapping)
        "inputs": [{"name": "x", "datatype": "FP32", "shape": ["-1", "1", "4", "4"]}],
        "outputs": [{"name": "z", "datatype": "FP32", "shape": ["-1", "3"]}],
    }
    decoder = triton.call(url, "get_model_metadata", model_name=DECODER, as_json=True)
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", "3"]}]
    assert decoder["outputs"] == [
        {"name": "x_hat", "datatype": "FP32", "shape": ["-1", "1", "4", "4"]}
    ]


@pytest.mark.parametrize(("model", "version"), [("nope", ""), (NAME, "v2")])
def test_unknown_model_or_version_is_not_found(
    triton: Triton, url: str, model: str, version: str
) -> None:
    err = triton.error(
        op="call",
        url=url,
        method="get_model_metadata",
        kwargs={"model_name": model, "model_version": version},
    )
    assert err["status"] == "StatusCode.NOT_FOUND"
    assert (repr(model) if not version else repr(version)) in err["message"]
    err = triton.error(**infer_request(url, inputs(1), model, model_version=version))
    assert err["status"] == "StatusCode.NOT_FOUND"


# --- inference ----------------------------------------------------------------------------------


def test_infer_equals_embed(triton: Triton, url: str, rest: TestClient) -> None:
    x = inputs(5)
    got = triton.result(**infer_request(url, x, request_id="req-7"))
    z = decode(got["arrays"]["z"])
    assert z.dtype == np.float32 and z.shape == (5, LATENT)
    response = got["response"]
    assert (response["model_name"], response["model_version"], response["id"]) == (
        NAME,
        "v1",
        "req-7",
    )
    assert response["outputs"] == [{"name": "z", "datatype": "FP32", "shape": ["5", "3"]}]
    embed = rest.post("/embed", json={"inputs": x.tolist()})
    assert embed.status_code == 200, embed.text
    np.testing.assert_allclose(z, np.asarray(embed.json()["embeddings"]), rtol=0, atol=1e-6)
    w_enc, _ = toy_weights(SHAPE, LATENT)
    np.testing.assert_allclose(z, toy_encode(x, w_enc), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("encoding", "datatype"), [("float16", "FP16"), ("uint8", "UINT8"), ("int8", "INT8")]
)
def test_infer_encoding_parameter_equals_embed(
    triton: Triton, url: str, rest: TestClient, encoding: str, datatype: str
) -> None:
    x = inputs(6, seed=1)
    got = triton.result(**infer_request(url, x, parameters={"encoding": encoding}))
    assert got["response"]["outputs"][0]["datatype"] == datatype
    codes = decode(got["arrays"]["z"])
    embed = rest.post("/embed", json={"inputs": x.tolist(), "encoding": encoding}).json()
    assert embed["encoding"] == encoding
    expected = np.asarray(embed["embeddings"], dtype=oip.DATATYPES[datatype])
    assert codes.dtype == expected.dtype
    np.testing.assert_allclose(codes.astype(np.float64), expected, rtol=0, atol=1e-6)


def test_decoder_model_decodes_latents(triton: Triton, url: str) -> None:
    z = np.random.default_rng(2).standard_normal((4, LATENT)).astype(np.float32)
    got = triton.result(**infer_request(url, z, DECODER, name="z", outputs=["x_hat"]))
    x_hat = decode(got["arrays"]["x_hat"])
    assert x_hat.shape == (4, *SHAPE)
    _, w_dec = toy_weights(SHAPE, LATENT)
    np.testing.assert_allclose(x_hat, toy_decode(z, w_dec, SHAPE), rtol=0, atol=1e-6)


def test_infer_runs_through_the_drift_monitor_and_the_batcher(
    triton: Triton, keyed: str, keyed_app: EmbeddingApp
) -> None:
    assert keyed_app.batcher is not None
    seen = keyed_app.drift()["embeddings_seen"]
    rows = keyed_app.batcher.stats().rows
    triton.result(**infer_request(keyed, inputs(7, seed=3), headers=AUTH))
    assert keyed_app.drift()["embeddings_seen"] == seen + 7
    assert keyed_app.batcher.stats().rows == rows + 7


# --- bad tensors -------------------------------------------------------------------------------

NAN = inputs(2)
NAN[1, 0, 2, 3] = np.nan

BAD_TENSORS = {
    # case: (request options, a fragment of the message)
    "datatype": (
        {"x": inputs(2).astype(np.float64), "datatype": "FP64"},
        "input 'x' has datatype FP64, expected FP32",
    ),
    "shape": (
        {"x": np.zeros((2, 1, 4, 5), np.float32)},
        "has shape [2, 1, 4, 5], expected [-1, 1, 4, 4]",
    ),
    "rank": ({"x": np.zeros((2, 16), np.float32)}, "input 'x' has shape [2, 16]"),
    # the data of 2 items under a shape that claims 3
    "byte count": (
        {"x": inputs(2), "shape": [3, 1, 4, 4]},
        "tensor 'x': 128 bytes of data, but FP32 [3, 1, 4, 4] needs 192",
    ),
    "NaN": ({"x": NAN}, "item 1: holds NaN at index [0, 2, 3]"),
    "input name": ({"x": inputs(2), "name": "pixels"}, "model 'toy' has no input 'pixels'"),
    "empty batch": ({"x": np.zeros((0, *SHAPE), np.float32)}, "batch is empty"),
    "too many items": ({"x": inputs(MAX_ITEMS + 1)}, f"at most {MAX_ITEMS} per request"),
    "encoding": (
        {"x": inputs(2), "parameters": {"encoding": "float8"}},
        "unknown encoding 'float8'",
    ),
    "decoder latents": (
        {"x": np.zeros((2, LATENT + 1), np.float32), "model": DECODER, "name": "z"},
        "input 'z' has shape [2, 4]",
    ),
}


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_bad_tensors_are_invalid_argument(
    triton: Triton, keyed: str, keyed_app: EmbeddingApp, case: str
) -> None:
    options, fragment = BAD_TENSORS[case]
    options = dict(options)
    x = options.pop("x")
    seen = keyed_app.drift()["embeddings_seen"]
    err = triton.error(**infer_request(keyed, x, headers=AUTH, **options))
    assert err["status"] == INVALID, err
    assert fragment in err["message"], err
    assert keyed_app.drift()["embeddings_seen"] == seen  # nothing reached the monitor
    # the server is fine afterwards
    assert triton.result(**infer_request(keyed, inputs(1), headers=AUTH))["arrays"]["z"]


@dataclass(frozen=True)
class Capped:
    app: EmbeddingApp
    channel: grpc.Channel
    url: str


@pytest.fixture(scope="module")
def capped(bundle: Path) -> Iterator[Capped]:
    """A server whose responses may carry 4 decoded items (64 bytes each) at most."""
    limit = RESPONSE_FRAMING_BYTES + 4 * 4 * math.prod(SHAPE)
    app = EmbeddingApp(
        load_bundle(bundle),
        limits=ServiceLimits(max_grpc_response_bytes=limit),
        metrics_registry=CollectorRegistry(),
        drift_enabled=False,
    )
    server = GrpcThread(app, 0)
    url = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(url) as channel:
        yield Capped(app, channel, url)
    server.stop()
    app.close()


def test_a_response_over_the_cap_is_refused_before_the_model_runs(
    triton: Triton, capped: Capped, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, url = capped.app, capped.url
    z = np.zeros((5, LATENT), np.float32)
    ran: list[Any] = []
    with monkeypatch.context() as patch:
        patch.setattr(app, "decode", ran.append)
        err = triton.error(**infer_request(url, z, DECODER, name="z"))
    assert not ran, "the decoder ran"
    assert err["status"] == "StatusCode.RESOURCE_EXHAUSTED"
    assert "ModelInfer of 5 inputs" in err["message"] and "at most 4 inputs fit" in err["message"]
    got = triton.result(**infer_request(url, z[:4], DECODER, name="z"))
    assert decode(got["arrays"]["x_hat"]).shape == (4, *SHAPE)


# --- request forms tritonclient does not send (our own stubs) -----------------------------------

Tensor = pb.ModelInferRequest.InferInputTensor


def model_infer(channel: grpc.Channel, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    return oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT)


def test_inputs_in_contents_equal_raw_contents(capped: Capped) -> None:
    app, channel = capped.app, capped.channel
    x = inputs(3, seed=5)
    tensor = Tensor(name="x", datatype="FP32", shape=x.shape)
    raw = model_infer(
        channel,
        pb.ModelInferRequest(model_name=NAME, inputs=[tensor], raw_input_contents=[x.tobytes()]),
    )
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    typed = model_infer(channel, pb.ModelInferRequest(model_name=NAME, inputs=[tensor]))
    assert typed.raw_output_contents == raw.raw_output_contents
    z = np.frombuffer(typed.raw_output_contents[0], "<f4").reshape(3, LATENT)
    np.testing.assert_array_equal(z, app.embed(list(x)).embeddings)


def _request(x: np.ndarray, **fields: Any) -> pb.ModelInferRequest:
    tensor = Tensor(name="x", datatype="FP32", shape=x.shape)
    return pb.ModelInferRequest(
        **{"model_name": NAME, "inputs": [tensor], "raw_input_contents": [x.tobytes()], **fields}
    )


def _with_contents(x: np.ndarray) -> pb.ModelInferRequest:
    request = _request(x)
    request.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    return request


def _with_parameter(request: pb.ModelInferRequest, key: str, **value: Any) -> pb.ModelInferRequest:
    request.parameters[key].CopyFrom(pb.InferParameter(**value))
    return request


def _with_output(request: pb.ModelInferRequest, name: str, **parameters: Any):
    output = request.outputs.add(name=name)
    for key, value in parameters.items():
        output.parameters[key].CopyFrom(pb.InferParameter(**value))
    return request


X2 = inputs(2)
MALFORMED = {
    # case: (request, a fragment of the message)
    "no data": (_request(X2, raw_input_contents=[]), "input 'x' carries no data"),
    "raw and contents": (_with_contents(X2), "set either contents or raw_input_contents"),
    "raw count": (
        _request(X2, raw_input_contents=[X2.tobytes(), b""]),
        "raw_input_contents has 2 entries for 1 inputs",
    ),
    "twice": (
        _request(
            X2,
            inputs=[Tensor(name="x", datatype="FP32", shape=X2.shape)] * 2,
            raw_input_contents=[X2.tobytes()] * 2,
        ),
        "input 'x' is given twice",
    ),
    "no input": (
        _request(X2, inputs=[], raw_input_contents=[]),
        "model 'toy' takes the inputs ['x'], got []",
    ),
    "contents count": (
        pb.ModelInferRequest(
            model_name=NAME,
            inputs=[
                Tensor(
                    name="x",
                    datatype="FP32",
                    shape=X2.shape,
                    contents=pb.InferTensorContents(fp32_contents=[1.0, 2.0]),
                )
            ],
        ),
        "tensor 'x': 2 values of data, but shape [2, 1, 4, 4] needs 32",
    ),
    "unknown output": (_with_output(_request(X2), "mu"), "model 'toy' has no output 'mu'"),
    "classification": (
        _with_output(_request(X2), "z", classification={"int64_param": 2}),
        "output 'z': parameter 'classification' is not supported",
    ),
    "empty parameter": (
        _with_parameter(_request(X2), "encoding"),
        "parameter 'encoding' has no value",
    ),
    "encoding type": (
        _with_parameter(_request(X2), "encoding", int64_param=8),
        "parameter 'encoding' must be a str, got int",
    ),
    "decoder encoding": (
        _with_parameter(
            pb.ModelInferRequest(
                model_name=DECODER,
                inputs=[Tensor(name="z", datatype="FP32", shape=[1, LATENT])],
                raw_input_contents=[np.zeros((1, LATENT), "<f4").tobytes()],
            ),
            "encoding",
            string_param="uint8",
        ),
        "model 'toy-decoder' does not take the parameter 'encoding' (it takes: none)",
    ),
    "negative dimension": (
        _request(X2, inputs=[Tensor(name="x", datatype="FP32", shape=[-1, 1, 4, 4])]),
        "tensor 'x': shape [-1, 1, 4, 4] must be a list of non-negative integers",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_requests_are_invalid_argument(capped: Capped, case: str) -> None:
    channel = capped.channel
    request, fragment = MALFORMED[case]
    with pytest.raises(grpc.RpcError) as err:
        model_infer(channel, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert fragment in err.value.details()


def test_requested_outputs_and_id_come_back(capped: Capped) -> None:
    channel = capped.channel
    reply = model_infer(channel, _with_output(_request(X2, id="abc", model_version="v1"), "z"))
    assert (reply.model_name, reply.model_version, reply.id) == (NAME, "v1", "abc")
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("z", "FP32", [2, 3])]
    assert len(reply.raw_output_contents) == 1


# (the transport-free module itself: tests/test_oip_shared.py)


# --- API key ------------------------------------------------------------------------------------


def test_api_key_is_enforced_on_the_inference_service(triton: Triton, keyed: str) -> None:
    for headers in (None, {"authorization": "Bearer wrong"}):
        for method, kwargs in [
            ("get_server_metadata", {}),
            ("get_model_metadata", {"model_name": NAME}),
        ]:
            err = triton.error(op="call", url=keyed, method=method, kwargs=kwargs, headers=headers)
            assert err["status"] == "StatusCode.UNAUTHENTICATED", (method, err)
        err = triton.error(**infer_request(keyed, inputs(1), headers=headers))
        assert err["status"] == "StatusCode.UNAUTHENTICATED"
        assert "authorization: Bearer <key>" in err["message"]
    meta = triton.result(
        op="call", url=keyed, method="get_model_metadata", kwargs={"model_name": NAME}, headers=AUTH
    )
    assert meta["name"] == NAME
    assert triton.result(**infer_request(keyed, inputs(1), headers=AUTH))["arrays"]["z"]


def test_health_stays_open_with_an_api_key(triton: Triton, keyed: str) -> None:
    assert triton.call(keyed, "is_server_live") is True
    assert triton.call(keyed, "is_server_ready") is True
    assert triton.call(keyed, "is_model_ready", model_name=NAME) is True
    with grpc.insecure_channel(keyed) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


# --- wire compatibility -------------------------------------------------------------------------


def _fields(message: Any) -> dict[str, list[Any]]:
    out = {}
    for f in message.fields:
        kind = f.message_type.full_name if f.message_type else f.type
        out[f.name] = [f.number, kind, f.is_repeated]
    for nested in message.nested_types:
        out.update({f"{nested.name}.{k}": v for k, v in _fields(nested).items()})
    return out


def test_messages_and_rpcs_match_tritonclient_s(triton: Triton) -> None:
    """Every field of our grpc_predict_v2.proto has the number, type and cardinality of
    tritonclient's copy of the protocol, and every RPC the same types and streaming."""
    ours = pb.DESCRIPTOR
    names = sorted(ours.message_types_by_name)
    theirs = triton.result(op="descriptor", messages=names)
    for name in names:
        mine = _fields(ours.message_types_by_name[name])
        assert mine == {k: v for k, v in theirs["messages"][name].items() if k in mine}, name
    service = ours.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        signature = [
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        ]
        assert theirs["methods"][method.name] == signature, method.name


# --- metrics ------------------------------------------------------------------------------------


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample ``name`` of a /metrics text: sorted labels -> value."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def method_labels(method: str, **extra: str) -> tuple[tuple[str, str], ...]:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "inference.GRPCInferenceService",
        "grpc_method": method,
        **extra,
    }
    return tuple(sorted(labels.items()))


def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check``: ``context.abort`` sends a failing call's status before the metrics
    interceptor sees its exception, so the count may land just after the client's answer."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_metrics_show_grpc_calls_with_their_codes(
    triton: Triton, url: str, rest: TestClient
) -> None:
    before = rest.get("/metrics").text
    triton.result(**infer_request(url, inputs(2)))
    assert triton.error(**infer_request(url, NAN))["status"] == INVALID
    triton.error(op="call", url=url, method="get_model_metadata", kwargs={"model_name": "nope"})
    handled = "grpc_server_handled_total"
    expected = [
        ("grpc_server_started_total", method_labels("ModelInfer"), 2),
        (handled, method_labels("ModelInfer", grpc_code="OK"), 1),
        (handled, method_labels("ModelInfer", grpc_code="InvalidArgument"), 1),
        (handled, method_labels("ModelMetadata", grpc_code="NotFound"), 1),
        ("grpc_server_handling_seconds_count", method_labels("ModelInfer"), 2),
    ]

    def deltas() -> list[float]:
        nonlocal after
        after = rest.get("/metrics").text
        return [
            samples(after, name)[labels] - samples(before, name).get(labels, 0.0)
            for name, labels, _ in expected
        ]

    after = ""
    until(lambda: deltas() == [n for _, _, n in expected], "the calls in /metrics")
    buckets = samples(after, "grpc_server_handling_seconds_bucket")
    assert (
        buckets[method_labels("ModelInfer", le="+Inf")]
        == samples(after, "grpc_server_handling_seconds_count")[method_labels("ModelInfer")]
    )
    # every method of every service is there from the start, every code at zero or more
    for service, method, kind in [
        ("sculpt.v1.Sculpt", "Embed", "unary"),
        ("grpc.health.v1.Health", "Watch", "server_stream"),
        ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo", "bidi_stream"),
    ]:
        labels = {"grpc_type": kind, "grpc_service": service, "grpc_method": method}
        key = tuple(sorted({**labels, "grpc_code": "Unauthenticated"}.items()))
        assert key in samples(after, handled), labels


def test_unauthenticated_calls_are_counted(
    triton: Triton, keyed: str, keyed_app: EmbeddingApp
) -> None:
    def handled(code: str) -> float:
        text = generate_latest(keyed_app.metrics_registry).decode()
        series = samples(text, "grpc_server_handled_total")
        return series[method_labels("ModelInfer", grpc_code=code)]

    before = handled("Unauthenticated")
    assert triton.error(**infer_request(keyed, inputs(1)))["status"] == "StatusCode.UNAUTHENTICATED"
    until(lambda: handled("Unauthenticated") == before + 1, "the refused call in the metrics")
