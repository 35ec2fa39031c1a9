"""One gRPC lifecycle for the standalone server and the in-worker thread.

Both go through ``start_server`` / ``stop_server``: health follows the app's readiness (the
check /readyz uses) while the server runs, and a stop flips health to NOT_SERVING first, then
lets in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from bundle_factory import make_bundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from sculptserve.bundle.load import load_bundle
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.grpc import grpc_predict_v2_pb2 as oip_pb
from sculptserve.serving.grpc import grpc_predict_v2_pb2_grpc as oip_grpc
from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as pb_grpc
from sculptserve.serving.grpc.server import serve
from sculptserve.serving.grpc.thread import GrpcThread

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "sculpt.v1.Sculpt"
GRACE_S = 10.0
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("lifecycle") / "toy")


def make_app(bundle_path: Path, **kwargs) -> EmbeddingApp:
    return EmbeddingApp(load_bundle(bundle_path), metrics_registry=CollectorRegistry(), **kwargs)


class Standalone:
    """``serve()`` (the standalone path) on its own event loop in a thread."""

    def __init__(self, app: EmbeddingApp) -> None:
        self._loop = asyncio.new_event_loop()
        ports: queue.Queue[int] = queue.Queue()
        self._stop: asyncio.Event | None = None

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(
                app, port=0, api_key="", stop=self._stop, grace_s=GRACE_S, on_ready=ports.put
            )

        self._thread = threading.Thread(
            target=lambda: self._loop.run_until_complete(main()), daemon=True
        )
        self._thread.start()
        self.port = ports.get(timeout=30)

    def stop(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=GRACE_S + 10)
        assert not self._thread.is_alive()
        self._loop.close()


class InWorker:
    """The in-worker ``GrpcThread`` (what the BentoML service starts)."""

    def __init__(self, app: EmbeddingApp) -> None:
        self._grpc = GrpcThread(app, 0, readiness_interval_s=0.05)
        self.port = self._grpc.port

    def stop(self) -> None:
        self._grpc.stop(grace=GRACE_S)
        assert not self._grpc._thread.is_alive()


LIFECYCLES: dict[str, Callable[[EmbeddingApp], Standalone | InWorker]] = {
    "standalone": Standalone,
    "in-worker": InWorker,
}


@pytest.fixture(params=sorted(LIFECYCLES))
def lifecycle(request: pytest.FixtureRequest) -> Callable[[EmbeddingApp], Standalone | InWorker]:
    return LIFECYCLES[request.param]


@pytest.fixture
def channel_to() -> Iterator[Callable[[int], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def open_channel(port: int) -> grpc.Channel:
        channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
        return channels[-1]

    yield open_channel
    for ch in channels:
        ch.close()


def check(channel: grpc.Channel, service: str = SERVICE) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status


def embed_request(n: int = 2) -> pb.EmbedRequest:
    x = np.zeros((n, 1, 4, 4), "<f4")
    return pb.EmbedRequest(inputs=pb.Inputs(tensor=pb.Tensor(shape=x.shape, data=x.tobytes())))


def test_health_follows_readiness(lifecycle, bundle_path: Path, channel_to) -> None:
    """NOT_SERVING while /readyz would fail (here: the drift worker has stopped), for Check
    and for a Watch stream; SERVING while the app is ready."""
    app = make_app(bundle_path)
    server = lifecycle(app)
    try:
        ch = channel_to(server.port)
        assert app.ready()
        assert check(ch) == check(ch, "") == SERVING
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT
        )
        assert next(watch).status == SERVING
        app.monitor.close()  # the drift worker is gone: the service is not ready any more
        assert not app.ready()
        # a Watch stream hears it from the periodic readiness task, without any Check
        assert next(watch).status == NOT_SERVING
        watch.cancel()
        assert check(ch) == check(ch, "") == NOT_SERVING
        # the calls themselves still work: readiness is advice to balancers
        assert len(pb_grpc.SculptStub(ch).Embed(embed_request(), timeout=TIMEOUT).embeddings.data)
    finally:
        server.stop()
        app.close()


def test_health_returns_to_serving_when_ready_again(
    bundle_path: Path, channel_to, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(bundle_path, drift_enabled=False)
    ready = [True]
    monkeypatch.setattr(app, "ready", lambda: ready[0])
    server = InWorker(app)
    try:
        ch = channel_to(server.port)
        assert check(ch) == SERVING
        ready[0] = False
        assert check(ch) == NOT_SERVING
        ready[0] = True
        assert check(ch) == SERVING
    finally:
        server.stop()
        app.close()


def test_oip_readiness_follows_the_app_and_the_drain(
    bundle_path: Path, channel_to, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Open Inference Protocol's ServerReady / ModelReady say what grpc.health.v1 says:
    false while the app is not ready and once a drain began; ServerLive stays true and
    inference is still served during the drain (readiness is advice to balancers)."""
    app = make_app(bundle_path, drift_enabled=False)
    ready = [True]
    monkeypatch.setattr(app, "ready", lambda: ready[0])
    server = InWorker(app)
    try:
        stub = oip_grpc.GRPCInferenceServiceStub(channel_to(server.port))

        def readiness() -> tuple[bool, bool, bool]:
            return (
                stub.ServerLive(oip_pb.ServerLiveRequest(), timeout=TIMEOUT).live,
                stub.ServerReady(oip_pb.ServerReadyRequest(), timeout=TIMEOUT).ready,
                stub.ModelReady(oip_pb.ModelReadyRequest(name="toy"), timeout=TIMEOUT).ready,
            )

        assert readiness() == (True, True, True)
        ready[0] = False
        assert readiness() == (True, False, False)
        ready[0] = True
        assert readiness() == (True, True, True)
        server._grpc.begin_drain()
        assert readiness() == (True, False, False)
        assert check(channel_to(server.port), "inference.GRPCInferenceService") == NOT_SERVING
        x = np.zeros((2, 1, 4, 4), "<f4")
        tensor = oip_pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)
        request = oip_pb.ModelInferRequest(
            model_name="toy", inputs=[tensor], raw_input_contents=[x.tobytes()]
        )
        reply = stub.ModelInfer(request, timeout=TIMEOUT)
        assert list(reply.outputs[0].shape) == [2, 3]
    finally:
        server.stop()
        app.close()


def test_stop_flips_health_first_then_drains_in_flight_calls(
    lifecycle, bundle_path: Path, channel_to, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(bundle_path, drift_enabled=False)
    entered, release = threading.Event(), threading.Event()
    embed = app.embed

    def slow_embed(*args, **kwargs):
        entered.set()
        assert release.wait(TIMEOUT), "the test never released the call"
        return embed(*args, **kwargs)

    monkeypatch.setattr(app, "embed", slow_embed)
    server = lifecycle(app)
    ch = channel_to(server.port)
    watch = health_pb2_grpc.HealthStub(ch).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=TIMEOUT
    )
    assert next(watch).status == SERVING
    in_flight = pb_grpc.SculptStub(ch).Embed.future(embed_request(3), timeout=TIMEOUT)
    assert entered.wait(TIMEOUT)

    started = time.monotonic()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    # health turns NOT_SERVING while the call is still running: balancers drain first
    assert next(watch).status == NOT_SERVING
    assert not in_flight.done()
    watch.cancel()
    # the server refuses new calls while the old one drains
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            check(channel_to(server.port))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            break
        assert time.monotonic() < deadline, "new calls were still accepted during the drain"
        time.sleep(0.05)
    assert not in_flight.done()
    release.set()
    response = in_flight.result(timeout=TIMEOUT)  # drained: finished, not cancelled
    assert list(response.embeddings.shape) == [3, 3]
    stopper.join(timeout=GRACE_S + 15)
    assert not stopper.is_alive()
    # the stop returned once the call was done, well before the grace period ran out
    assert time.monotonic() - started < GRACE_S
    app.close()


def test_calls_during_a_stop_under_load_get_unavailable_never_cancelled(
    lifecycle, bundle_path: Path, channel_to
) -> None:
    """grpc's shutdown cancels calls that reached the server but not yet its busy event loop
    (issue 13: CANCELLED under load, which does not say whether the call ran). The stop now
    answers them UNAVAILABLE itself first. Busy threads in this process make the loop lag the
    way a loaded worker's does (before the fix: CANCELLED in 4 of 5 such stops)."""
    app = make_app(bundle_path, drift_enabled=False)
    server = lifecycle(app)
    stub = pb_grpc.SculptStub(channel_to(server.port))
    codes: list[grpc.StatusCode] = []
    lock, busy = threading.Lock(), threading.Event()

    def client() -> None:
        while True:
            try:
                stub.Embed(embed_request(), timeout=TIMEOUT)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            with lock:
                codes.append(code)
            if code != grpc.StatusCode.OK:
                return

    def hog() -> None:
        while not busy.is_set():
            sum(range(10_000))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    hogs = [threading.Thread(target=hog, daemon=True) for _ in range(3)]
    for t in threads + hogs:
        t.start()
    try:
        time.sleep(0.5)
        server.stop()
        for t in threads:
            t.join(timeout=TIMEOUT)
    finally:
        busy.set()
        app.close()
    assert not any(t.is_alive() for t in threads)
    assert codes.count(grpc.StatusCode.OK) > 0
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(codes)
    assert codes.count(grpc.StatusCode.UNAVAILABLE) == len(threads)  # each ended on a refusal
