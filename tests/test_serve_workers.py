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

    def grpc_embed() -> np.ndarray:  # a new channel is a new connection (SO_REUSEPORT)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = rpc.SculptStub(channel).Embed(pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor)))
        return np.frombuffer(reply.embeddings.data, "<f4").reshape(tuple(reply.embeddings.shape))

    def rest_embed() -> np.ndarray:  # httpx without a client: a new connection each time
        r = httpx.post(f"{url}/embed", json={"inputs": x.tolist(), "encoding": "float32"})
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["embeddings"])

    served = 0
    for embed in (grpc_embed, rest_embed):
        before = served_by_worker(httpx.get(f"{url}/metrics", timeout=10).text)
        # the kernel picks the worker of each connection: send until both took some (at most
        # 200; a fair split leaves one idle after 24 with probability 1e-7)
        for sent in range(1, 201):
            np.testing.assert_allclose(embed(), expected, atol=1e-5)
            served += len(x)
            if sent % 24 == 0:
                counts = served_by_worker(httpx.get(f"{url}/metrics", timeout=10).text)
                took = {w: counts[w] - before.get(w, 0.0) for w in counts}
                if sum(n > 0 for n in took.values()) == 2:
                    break
        assert sum(n > 0 for n in took.values()) == 2, (embed.__name__, took)
        assert sum(counts.values()) == served  # each worker's monitor saw its own share


def test_sigterm_stops_every_worker(two_workers):
    proc, _, _, log = two_workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
