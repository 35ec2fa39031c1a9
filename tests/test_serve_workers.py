"""`sculpt serve` with SCULPT_WORKERS=2: both workers serve REST and the shared gRPC port, each
with its own drift monitor (metrics labelled by worker), and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest
from bundle_factory import make_bundle, toy_encode, toy_weights
from prometheus_client.parser import text_string_to_metric_families
from server_ready import wait_ready
from test_serve_subprocess import free_port

from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as rpc


def served_by_worker(metrics: str) -> dict[str, float]:
    """sculpt_embeddings_served_total by worker label."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "sculpt_embeddings_served_total":
                worker = sample.labels["worker"]
                out[worker] = out.get(worker, 0.0) + sample.value
    return out


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    bundle = make_bundle(root / "bundle")
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")),
        "BENTOML_DO_NOT_TRACK": "1",
        "SCULPT_WORKERS": "2",
        "SCULPT_SHUTDOWN_DELAY_S": "0.2",
    }
    log = root / "serve.log"
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sculptserve.cli", "serve", str(bundle), "--port", str(port),
         "--grpc-port", str(grpc_port)],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log.read_text)
    yield proc, url, grpc_port, log
    if proc.poll() is None:
        proc.kill()
    out.close()


def test_both_workers_serve_rest_and_the_shared_grpc_port(two_workers):
    _, url, grpc_port, _ = two_workers
    x = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32)
    expected = toy_encode(x, toy_weights((1, 4, 4), 3)[0])
    tensor = pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())
    # each new channel is a new connection, which the kernel hands to either worker
    for _ in range(24):
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = rpc.SculptStub(channel).Embed(pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor)))
        z = np.frombuffer(reply.embeddings.data, dtype="<f4").reshape(tuple(reply.embeddings.shape))
        np.testing.assert_allclose(z, expected, atol=1e-5)
    grpc_counts = served_by_worker(httpx.get(f"{url}/metrics", timeout=10).text)
    assert sum(grpc_counts.values()) == 48
    assert len([n for n in grpc_counts.values() if n > 0]) == 2, grpc_counts

    for _ in range(24):  # a new connection per request: httpx without a client
        r = httpx.post(
            f"{url}/embed", json={"inputs": x.tolist(), "encoding": "float32"}, timeout=10
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["embeddings"], expected, atol=1e-5)
    counts = served_by_worker(httpx.get(f"{url}/metrics", timeout=10).text)
    assert sum(counts.values()) == 96
    rest = {w: counts[w] - grpc_counts.get(w, 0.0) for w in counts}
    assert len([n for n in rest.values() if n > 0]) == 2, rest


def test_sigterm_stops_every_worker(two_workers):
    proc, _, _, log = two_workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
