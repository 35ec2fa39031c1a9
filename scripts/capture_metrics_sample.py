"""Recapture tests/data/deploy/metrics-sample.txt: the /metrics of a real `sculpt serve`.

Starts `sculpt serve` (one BentoML worker, REST and gRPC) on loopback with a toy bundle
(tests/bundle_factory.py), calls every REST route once (plus a 400), enough /embed rows for a
drift window, and over gRPC: sculpt.v1 Embed, a health Check, and the Open Inference Protocol's
ServerReady, ModelMetadata of an unknown model (NotFound) and ModelInfer (one OK, one NaN
input: InvalidArgument); then writes /metrics with a header naming how it was made. The
metric names the alert rules and the Grafana dashboard may use are checked against it
(tests/test_deploy_monitoring.py). Rerun it after a change to the service's metrics or a
BentoML upgrade:

    python scripts/capture_metrics_sample.py [--out tests/data/deploy/metrics-sample.txt]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from bundle_factory import make_bundle  # noqa: E402  (a test helper: the toy bundle)

from sculptserve.serving.grpc import grpc_predict_v2_pb2 as oip_pb  # noqa: E402
from sculptserve.serving.grpc import grpc_predict_v2_pb2_grpc as oip_rpc  # noqa: E402
from sculptserve.serving.grpc import sculpt_pb2 as pb  # noqa: E402
from sculptserve.serving.grpc import sculpt_pb2_grpc as rpc  # noqa: E402

OUT = REPO / "tests" / "data" / "deploy" / "metrics-sample.txt"
NAME, SHAPE = "toy", (1, 4, 4)  # the toy bundle's
START_S = 180.0
TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving() -> Iterator[tuple[str, int]]:
    """`sculpt serve` of a toy bundle: (REST base URL, gRPC port), stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="sculpt-metrics-") as tmp:
        yield from _serve(Path(tmp))


def _serve(root: Path) -> Iterator[tuple[str, int]]:
    bundle = make_bundle(root / "bundle", name=NAME, input_shape=SHAPE)
    port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "1"}
    command = [sys.executable, "-m", "sculptserve.cli", "serve", str(bundle)]
    command += ["--port", str(port), "--grpc-port", str(grpc_port)]
    with (root / "serve.log").open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_S
            while not _ready(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "serve.log").read_text(errors="replace")[-3000:]
                    raise SystemExit(f"sculpt serve did not become ready:\n{tail}")
                time.sleep(0.5)
            yield url, grpc_port
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(SHAPE[1:], 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def call_rest(url: str) -> None:
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=url, timeout=TIMEOUT_S) as client:
        for route in ("/livez", "/readyz", "/info", "/drift"):
            client.get(route).raise_for_status()
        # a full drift window (the toy bundle's is 128 rows), so a window gets evaluated
        client.post("/embed", json={"inputs": rng.random((200, *SHAPE)).tolist()})
        client.post("/embed", json={"inputs": []})  # 400
        client.post("/embed/files", files=[("files", ("x.png", _png(), "image/png"))])
        client.post("/reconstruct", json={"inputs": rng.random((2, *SHAPE)).tolist()})
        client.post("/generate", json={"n": 2, "seed": 0})
        client.post(f"/v2/models/{NAME}/infer", json=_oip_json(rng.random((2, *SHAPE))))


def _oip_json(x: np.ndarray) -> dict:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    return {"inputs": [{**tensor, "data": x.ravel().tolist()}]}


def call_grpc(port: int) -> None:
    x = np.random.default_rng(1).random((2, *SHAPE), dtype=np.float32)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        sculpt = rpc.SculptStub(channel)
        tensor = pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())
        sculpt.Embed(pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor)), timeout=TIMEOUT_S)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        oip = oip_rpc.GRPCInferenceServiceStub(channel)
        oip.ServerReady(oip_pb.ServerReadyRequest(), timeout=10)
        expect_error(lambda: oip.ModelMetadata(oip_pb.ModelMetadataRequest(name="nope")))
        for values in (x, np.full_like(x, np.nan)):  # OK, then InvalidArgument
            infer = oip_pb.ModelInferRequest.InferInputTensor(
                name="x", datatype="FP32", shape=list(values.shape)
            )
            request = oip_pb.ModelInferRequest(
                model_name=NAME, inputs=[infer], raw_input_contents=[values.tobytes()]
            )
            if np.isnan(values).any():
                expect_error(lambda request=request: oip.ModelInfer(request, timeout=TIMEOUT_S))
            else:
                oip.ModelInfer(request, timeout=TIMEOUT_S)


def expect_error(call: Callable[[], object]) -> None:
    try:
        call()
    except grpc.RpcError:
        return
    raise SystemExit("a call that must fail succeeded")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with serving() as (url, grpc_port):
        call_rest(url)
        call_grpc(grpc_port)
        text = scrape_after_a_drift_window(url)
    header = (
        f"# /metrics of a real `sculpt serve` (BentoML {version('bentoml')}, one worker) on a toy "
        "bundle, captured\n# by scripts/capture_metrics_sample.py for "
        "tests/test_deploy_monitoring.py: the metric names the\n# alert rules and the Grafana "
        "dashboard may use. The slow test re-checks them against a live server.\n"
        "# Calls before the capture: every REST route once (and a 400), a drift window of "
        "/embed rows, and\n# over gRPC: sculpt.v1 Embed, a health Check, ServerReady, "
        "ModelMetadata of an unknown model\n# (NotFound), ModelInfer (one OK, one NaN input: "
        "InvalidArgument); every gRPC method starts at zero.\n"
    )
    args.out.write_text(header + text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


def scrape_after_a_drift_window(url: str) -> str:
    """/metrics once the drift window is scored (on the worker's background thread)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        text = httpx.get(f"{url}/metrics", timeout=TIMEOUT_S).text
        evaluated = [
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "sculpt_drift_windows_evaluated_total"
        ]
        if evaluated and min(evaluated) >= 1:
            return text
        if time.monotonic() > deadline:
            raise SystemExit("no drift window was evaluated")
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
