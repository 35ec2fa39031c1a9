"""SIGTERM to a real `sculpt serve` under load (issue 13, finding 5), REST and gRPC together.

The BentoML arbiter, its uvicorn worker, the in-worker gRPC server: 32 REST clients and 4
gRPC clients keep sending embeds while the server is told to stop. Every request that reached
it is answered, /readyz and gRPC health turn first, and new requests are still served during
the delay. The steps are tested one by one, faster, in tests/test_shutdown_drain.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from bundle_factory import make_bundle
from drain_clients import Tally, grpc_client, http_client, start
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sculptserve.serving.grpc import sculpt_pb2 as pb
from sculptserve.serving.grpc import sculpt_pb2_grpc as rpc

DELAY_S = 2.0
GRACE_S = 10.0
N_HTTP, N_GRPC = 32, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readyz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    finally:
        conn.close()


@contextlib.contextmanager
def sculpt_serve(tmp_path: Path, **settings: str) -> Iterator[tuple[subprocess.Popen, int, int]]:
    """`sculpt serve` of a toy bundle in a session of its own (a terminal's process group),
    with these SCULPT_* settings; (process, HTTP port, gRPC port) once /readyz says 200."""
    bundle = make_bundle(tmp_path / "bundle")
    port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "1",
        **{f"SCULPT_{name.upper()}": value for name, value in settings.items()},
    }
    command = [sys.executable, "-m", "sculptserve.cli", "serve", str(bundle)]
    command += ["--port", str(port), "--grpc-port", str(grpc_port)]
    # A file, not a pipe: BentoML logs every request, and a full pipe would stall the server.
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if readyz(port) == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sculpt serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield proc, port, grpc_port
    finally:
        if proc.poll() is None:  # the worker has a session of its own: kill the whole tree
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            proc.kill()
            proc.wait()


def test_sigterm_under_load_answers_every_accepted_request_rest_and_grpc(tmp_path) -> None:
    settings = {"shutdown_delay_s": str(DELAY_S), "shutdown_grace_s": str(GRACE_S)}
    with sculpt_serve(tmp_path, **settings) as (proc, port, grpc_port):
        x = np.zeros((2, 1, 4, 4), "<f4")
        body = json.dumps({"inputs": x.tolist()}).encode()
        tensor = pb.Tensor(shape=x.shape, data=x.tobytes())
        request = pb.EmbedRequest(inputs=pb.Inputs(tensor=tensor))
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        health = health_pb2_grpc.HealthStub(channel)
        rest, grpc_tally, stop = Tally(), Tally(), threading.Event()
        clients = start(
            [
                threading.Thread(target=http_client, args=(port, "/embed", body, rest, stop))
                for _ in range(N_HTTP)
            ]
            + [
                threading.Thread(
                    target=grpc_client,
                    args=(rpc.SculptStub(channel).Embed, request, grpc_tally, stop),
                )
                for _ in range(N_GRPC)
            ]
        )
        time.sleep(1.0)
        assert rest.answered and grpc_tally.answered, "the clients never got going"

        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # readiness turns at once, on both front ends
        while readyz(port) != 503:
            assert time.monotonic() - signalled < 1.0, "/readyz still 200 a second after SIGTERM"
        check = health_pb2.HealthCheckRequest(service="sculpt.v1.Sculpt")
        while health.Check(check, timeout=5).status != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() - signalled < 1.0, "gRPC still SERVING a second after SIGTERM"
        turned = time.monotonic()

        rc = proc.wait(timeout=DELAY_S + GRACE_S + 15)
        stopped = time.monotonic() - signalled
        for c in clients:
            c.join(timeout=15)
        stop.set()
        channel.close()
        assert not any(c.is_alive() for c in clients)
        assert rc == 0
        # delay, then the stop's bounded steps; nothing was in flight for long
        assert DELAY_S <= stopped < DELAY_S + 6
        for name, tally in (("REST", rest), ("gRPC", grpc_tally)):
            assert tally.failed == [], f"{name}: {len(tally.failed)} failed: {tally.failed[:5]}"
            # new requests were still served while readiness said 503 / NOT_SERVING
            assert tally.answered_after(turned) > 0, name
        assert rest.statuses().keys() == {200}
        assert rest.refused == N_HTTP and grpc_tally.refused == N_GRPC


def test_ctrl_c_drains_and_ctrl_c_again_stops_at_once(tmp_path) -> None:
    """Ctrl-C in a terminal (SIGINT to the process group) starts the drain; the second one
    ends it: BentoML's arbiter passes on only one signal, so `sculpt serve` interrupts the
    worker itself."""
    with sculpt_serve(tmp_path, shutdown_delay_s="60") as (proc, port, _):
        os.killpg(proc.pid, signal.SIGINT)
        began = time.monotonic()
        while readyz(port) != 503:
            assert time.monotonic() - began < 1.0
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - began < 10  # not the 60 s delay
