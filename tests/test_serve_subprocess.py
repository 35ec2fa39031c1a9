"""`sculpt serve` for real: one subprocess on loopback, REST and gRPC sharing one app."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import grpc
import numpy as np
import pytest
from bundle_factory import make_bundle, toy_encode, toy_weights

from sculptserve.bundle.digest import (
    generate_key,
    key_id,
    load_private_key,
    sign_digest,
    write_keypair,
)
from sculptserve.bundle.load import bundle_digest
from sculptserve.bundle.schema import SIGNATURE
from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as rpc

SLOW_CLIENT_TIMEOUT_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    bundle = make_bundle(root / "bundle")
    # signed and pinned, as in production: the workers must get both and check them
    write_keypair(generate_key(), root / "key.pem", root / "key.pub.pem")
    signature = sign_digest(load_private_key(root / "key.pem"), bundle_digest(bundle))
    (bundle / SIGNATURE).write_text(signature.model_dump_json())
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")),
        "BENTOML_DO_NOT_TRACK": "1",
        "SCULPT_BATCH": "on",  # the batched path end to end, REST and gRPC together
        # slow clients are cut off after a second (test_slow_clients_are_cut_off_...)
        "SCULPT_HTTP_HEADER_TIMEOUT_S": str(SLOW_CLIENT_TIMEOUT_S),
        "SCULPT_HTTP_BODY_TIMEOUT_S": str(SLOW_CLIENT_TIMEOUT_S),
        "SCULPT_SHUTDOWN_DELAY_S": "0.5",  # the teardown's Ctrl-C drains briefly
    }
    # A file, not a pipe nobody reads: BentoML logs every request.
    log = tmp_path_factory.mktemp("log") / "serve.log"
    out = log.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sculptserve.cli",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--expect-digest",
            bundle_digest(bundle),
            "--verify-key",
            str(root / "key.pub.pem"),
        ],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    client = None
    while time.time() < deadline and proc.poll() is None:
        try:
            client = bentoml.SyncHTTPClient(url, server_ready_timeout=5)
            if client.is_ready():
                break
        except Exception:  # not listening yet
            time.sleep(0.5)
    if proc.poll() is not None or client is None:
        pytest.fail(f"sculpt serve did not start:\n{log.read_text()}")
    yield proc, client, grpc_port
    client.close()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    out.close()


def test_the_pin_and_the_verify_key_reach_the_workers(server):
    """`sculpt serve --expect-digest --verify-key` pass both to the BentoML worker, which loads
    the bundle through the same checks (the signature shows verified only with the key)."""
    _, client, _ = server
    info = client.info()
    assert info["digest"] == bundle_digest(info["path"])
    key = load_private_key(f"{info['path']}/../key.pem")
    assert info["signature"] == {"key_id": key_id(key), "verified": True}


def test_rest_and_grpc_share_one_app(server):
    _, client, grpc_port = server
    x = np.random.default_rng(0).random((3, 1, 4, 4), dtype=np.float32)
    expected = toy_encode(x, toy_weights((1, 4, 4), 3)[0])
    rest = client.embed(inputs=x.tolist(), encoding="float32")
    np.testing.assert_allclose(rest["embeddings"], expected, atol=1e-5)

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = rpc.SculptStub(channel)
    tensor = pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())
    reply = stub.Embed(pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor)))
    z = np.frombuffer(reply.embeddings.data, dtype="<f4").reshape(tuple(reply.embeddings.shape))
    np.testing.assert_allclose(z, expected, atol=1e-5)

    drift = json.loads(stub.GetDrift(pb.GetDriftRequest()).json)
    assert drift["embeddings_seen"] == 6  # 3 over REST + 3 over gRPC: one monitor
    channel.close()


def test_concurrent_rest_and_grpc_embeds_share_the_batcher(server):
    proc, client, grpc_port = server
    w_enc = toy_weights((1, 4, 4), 3)[0]
    before = client.info()["batching"]
    rng = np.random.default_rng(1)
    inputs = [rng.random((int(n), 1, 4, 4), dtype=np.float32) for n in rng.integers(1, 9, 24)]
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = rpc.SculptStub(channel)

    def call(i: int) -> np.ndarray:
        x = inputs[i]
        if i % 2:  # odd: gRPC, even: REST (its own client: SyncHTTPClient is not thread-safe)
            tensor = pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())
            e = stub.Embed(pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor))).embeddings
            return np.frombuffer(e.data, dtype="<f4").reshape(tuple(e.shape))
        with bentoml.SyncHTTPClient(client.url, server_ready_timeout=5) as own:
            return np.asarray(own.embed(inputs=x.tolist())["embeddings"], dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(len(inputs))))
    channel.close()
    for x, z in zip(inputs, results, strict=True):
        np.testing.assert_allclose(z, toy_encode(x, w_enc), atol=1e-5)
    after = client.info()["batching"]
    # every request of both front ends went through the one batcher of the one app
    assert after["requests"] - before["requests"] == len(inputs)
    assert after["rows"] - before["rows"] == sum(len(x) for x in inputs)
    if "OPENBLAS_NUM_THREADS" not in os.environ:  # the service's envs reach its worker
        import psutil

        workers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "worker" in " ".join(p.cmdline())
        ]
        assert workers and all(p.environ().get("OPENBLAS_NUM_THREADS") == "1" for p in workers)


def test_server_stops_cleanly_on_ctrl_c(server):
    proc, _, _ = server
    assert proc.poll() is None  # still up after the other test's traffic


@pytest.mark.parametrize(
    ("what", "head"),
    [
        ("headers", b"POST /embed HTTP/1.1\r\nhost: x\r\n"),
        # a JSON body (any other media type is refused at once with 415, before the body)
        (
            "body",
            b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{",
        ),
    ],
)
def test_slow_clients_are_cut_off_while_others_are_served(server, what: str, head: bytes) -> None:
    """Issue 13, finding 6: a connection trickling its headers or its body is answered 408
    and closed after SCULPT_HTTP_HEADER_TIMEOUT_S / SCULPT_HTTP_BODY_TIMEOUT_S (1 s here),
    while a normal client is served meanwhile. (The same in detail: tests/test_slow_clients.py.)"""
    _, client, _ = server
    port = int(client.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as slow:
        began = time.monotonic()
        slow.sendall(head)
        slow.settimeout(0.25)
        received = b""
        served = 0
        while time.monotonic() - began < SLOW_CLIENT_TIMEOUT_S + 3:
            try:
                slow.sendall(b" " if what == "body" else b"x-pad: 1\r\n")
                chunk = slow.recv(4096)
            except TimeoutError:  # still open: keep trickling, and serve a normal client
                x = np.zeros((1, 1, 4, 4), np.float32)
                assert len(client.embed(inputs=x.tolist())["embeddings"]) == 1
                served += 1
                continue
            except OSError:  # reset after the 408 (unread trickle in the server's buffer)
                break
            received += chunk
            if not chunk or b"\r\n\r\n" in received:
                break
        took = time.monotonic() - began
    assert received.startswith(b"HTTP/1.1 408 "), received[:100]
    assert SLOW_CLIENT_TIMEOUT_S <= took < SLOW_CLIENT_TIMEOUT_S + 2.0
    assert served >= 1
