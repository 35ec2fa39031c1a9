"""gRPC server metrics (grpc-prometheus convention) for every service and method served.

In-process servers (``GrpcThread``) write to a private registry each, read back with
``generate_latest``; one test runs a server in a child process under
``PROMETHEUS_MULTIPROC_DIR`` and reads the series the way BentoML's /metrics does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundle_factory import make_bundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from sculptserve.bundle.load import load_bundle
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as pb_grpc
from sculptserve.serving.grpc.metrics import CODE_NAMES
from sculptserve.serving.grpc.thread import GrpcThread

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 20.0
HANDLED = "grpc_server_handled_total"
SERVICES = {
    # service -> {method: grpc_type}
    "sculpt.v1.Sculpt": dict.fromkeys(
        ("Embed", "Generate", "Reconstruct", "GetDrift", "GetInfo"), "unary"
    ),
    "inference.GRPCInferenceService": dict.fromkeys(
        (
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
        ),
        "unary",
    ),
    "grpc.health.v1.Health": {"Check": "unary", "List": "unary", "Watch": "server_stream"},
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo": "bidi_stream"},
}

Labels = tuple[tuple[str, str], ...]


def labels(service: str, method: str, **extra: str) -> Labels:
    kind = SERVICES[service][method]
    pairs = {"grpc_type": kind, "grpc_service": service, "grpc_method": method, **extra}
    return tuple(sorted(pairs.items()))


def read(text: str, name: str) -> dict[Labels, float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def embed_request(n: int = 2, encoding: str = "") -> pb.EmbedRequest:
    x = np.zeros((n, 1, 4, 4), "<f4")
    tensor = pb.Tensor(shape=x.shape, data=x.tobytes())
    return pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor), encoding=encoding)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("metrics") / "toy")


class Server:
    """A GrpcThread on a private registry, with a channel to it."""

    def __init__(self, bundle_path: Path, api_key: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.app = EmbeddingApp(
            load_bundle(bundle_path), metrics_registry=self.registry, background_drift=False
        )
        self.grpc = GrpcThread(self.app, 0, api_key=api_key)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc.port}")

    def metric(self, name: str) -> dict[Labels, float]:
        return read(generate_latest(self.registry).decode(), name)

    def handled(self, service: str, method: str, code: str) -> float:
        return self.metric(HANDLED)[labels(service, method, grpc_code=code)]

    def wait_handled(self, service: str, method: str, code: str, value: float) -> None:
        """Until the server has recorded the call: ``context.abort`` sends the status before
        its exception reaches the interceptor, and a cancelled call ends there a bit later."""
        deadline = time.monotonic() + TIMEOUT
        while self.handled(service, method, code) != value:
            assert time.monotonic() < deadline, f"{method} {code} stayed below {value}"
            time.sleep(0.02)

    def close(self) -> None:
        self.channel.close()
        self.grpc.stop()
        self.app.close()


@pytest.fixture
def server(bundle_path: Path) -> Iterator[Server]:
    srv = Server(bundle_path)
    yield srv
    srv.close()


def test_every_method_of_every_service_starts_at_zero(server: Server) -> None:
    handled = server.metric(HANDLED)
    expected = {
        labels(service, method, grpc_code=code)
        for service, methods in SERVICES.items()
        for method in methods
        for code in CODE_NAMES.values()
    }
    assert set(handled) == expected  # 15 methods x 17 codes: the convention's label values
    assert set(handled.values()) == {0.0}
    started = server.metric("grpc_server_started_total")
    assert set(started) == {labels(s, m) for s, ms in SERVICES.items() for m in ms}
    assert set(started.values()) == {0.0}
    buckets = {dict(k)["le"] for k in server.metric("grpc_server_handling_seconds_bucket")}
    assert buckets == {
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf",
    }  # fmt: skip


def test_unary_calls_are_counted_by_status_code(server: Server) -> None:
    stub = pb_grpc.SculptStub(server.channel)
    stub.Embed(embed_request(), timeout=TIMEOUT)
    stub.Embed(embed_request(), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(embed_request(encoding="float8"), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.handled("sculpt.v1.Sculpt", "Embed", "OK") == 2
    server.wait_handled("sculpt.v1.Sculpt", "Embed", "InvalidArgument", 1)
    embed = labels("sculpt.v1.Sculpt", "Embed")
    assert server.metric("grpc_server_started_total")[embed] == 3
    assert server.metric("grpc_server_handling_seconds_count")[embed] == 3
    seconds = server.metric("grpc_server_handling_seconds_sum")[embed]
    assert 0 < seconds < 3 * TIMEOUT
    # other methods untouched
    assert server.handled("sculpt.v1.Sculpt", "Generate", "OK") == 0


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_call_cut_short_is_counted_as_the_client_saw_it(
    server: Server, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    entered, release = threading.Event(), threading.Event()
    embed = server.app.embed

    def slow_embed(*args, **kwargs):
        entered.set()
        release.wait(TIMEOUT)
        return embed(*args, **kwargs)

    monkeypatch.setattr(server.app, "embed", slow_embed)
    stub = pb_grpc.SculptStub(server.channel)
    try:
        if how == "deadline":
            with pytest.raises(grpc.RpcError) as err:
                stub.Embed(embed_request(), timeout=0.3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            code = "DeadlineExceeded"
        else:
            future = stub.Embed.future(embed_request(), timeout=TIMEOUT)
            assert entered.wait(TIMEOUT)
            future.cancel()
            code = "Canceled"
        server.wait_handled("sculpt.v1.Sculpt", "Embed", code, 1)
    finally:
        release.set()
    assert server.handled("sculpt.v1.Sculpt", "Embed", "OK") == 0


def test_streams_are_counted_with_their_type(server: Server) -> None:
    watch = health_pb2_grpc.HealthStub(server.channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    server.wait_handled("grpc.health.v1.Health", "Watch", "Canceled", 1)

    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
    names = {s.name for s in reply.list_services_response.service}
    assert {"sculpt.v1.Sculpt", "inference.GRPCInferenceService"} <= names
    service = "grpc.reflection.v1alpha.ServerReflection"
    server.wait_handled(service, "ServerReflectionInfo", "OK", 1)


def test_refused_calls_are_counted_and_unknown_methods_make_no_series(
    bundle_path: Path,
) -> None:
    srv = Server(bundle_path, api_key="k")
    try:
        stub = pb_grpc.SculptStub(srv.channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        srv.wait_handled("sculpt.v1.Sculpt", "GetInfo", "Unauthenticated", 1)
        series = set(srv.metric(HANDLED))
        # made-up methods, behind the key check and outside any service: no new label values
        for method in ("/sculpt.v1.Sculpt/Nope", "/inference.GRPCInferenceService/ModelConfig"):
            call: Callable[..., bytes] = srv.channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            srv.channel.unary_unary("/no.Such/Method")(b"", timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert set(srv.metric(HANDLED)) == series
    finally:
        srv.close()


CHILD = textwrap.dedent(
    """
    import sys

    import grpc
    import numpy as np

    from sculptserve.bundle.load import load_bundle
    from sculptserve.serving.core import EmbeddingApp
    from sculptserve.serving.grpc import sculpt_pb2 as pb, sculpt_pb2_grpc as rpc
    from sculptserve.serving.grpc.thread import GrpcThread

    app = EmbeddingApp(load_bundle(sys.argv[1]), background_drift=False)
    server = GrpcThread(app, 0)
    x = np.zeros((2, 1, 4, 4), "<f4")
    tensor = pb.Tensor(shape=x.shape, data=x.tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rpc.SculptStub(channel)
        stub.Embed(pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor)), timeout=20)
        try:
            stub.Embed(pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor), encoding="x"), timeout=20)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    server.stop()
    app.close()
    """
)


def test_multiprocess_mode_exports_the_series(bundle_path: Path, tmp_path: Path) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR (BentoML's workers) a worker's gRPC series reach the
    MultiProcessCollector /metrics is built with."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    handled = read(text, HANDLED)
    assert handled[labels("sculpt.v1.Sculpt", "Embed", grpc_code="OK")] == 1
    assert handled[labels("sculpt.v1.Sculpt", "Embed", grpc_code="InvalidArgument")] == 1
    assert handled[labels("inference.GRPCInferenceService", "ModelInfer", grpc_code="OK")] == 0
    count = read(text, "grpc_server_handling_seconds_count")
    assert count[labels("sculpt.v1.Sculpt", "Embed")] == 2
