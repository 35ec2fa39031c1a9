"""The shutdown drain (issue 13, finding 5) on a real uvicorn worker, without BentoML.

tests/uvicorn_worker.py runs uvicorn the way BentoML's worker does, on a listening socket this
test process owns and keeps open until the worker has exited, as BentoML's circus arbiter
does: the set-up in which 62 requests got a connection reset on SIGTERM. The same sequence
through the real `sculpt serve` (BentoML, gRPC) is tested in tests/test_serve_drain.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from drain_clients import Tally, http_client, start
from uvicorn_worker import Worker, launch

from sculptserve.serving.http.shutdown import DrainingMiddleware, ListenerGate

LINUX = sys.platform.startswith("linux")
N_CLIENTS = 32


@pytest.fixture
def worker() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(**options: float) -> Worker:
        started.append(launch(**options))
        return started[-1]

    yield start
    for w in started:
        w.kill()


def post(w: Worker, path: str) -> http.client.HTTPResponse:
    return w.request("POST", path, b"{}", timeout=30)


# --- the regression test ----------------------------------------------------------------------


def test_sigterm_under_32_clients_leaves_no_accepted_request_unanswered(worker) -> None:
    """Issue 13's reproducer: 32 keep-alive clients, SIGTERM. Before: 62 resets. Now every
    request that reached the server is answered, and the clients end on a refusal."""
    w = worker(delay=0.5, grace=10)
    tally, stop = Tally(), threading.Event()
    clients = start(
        [
            threading.Thread(
                target=http_client,
                args=(w.port, "/work?ms=5", b"{}", tally, stop),
                kwargs={"timeout": 10.0},
            )
            for _ in range(N_CLIENTS)
        ]
    )
    time.sleep(1.0)
    assert len(tally.answered) > N_CLIENTS, "the clients never got going"
    signalled = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    took = w.wait(timeout=30)
    for c in clients:
        c.join(timeout=15)
    stop.set()
    assert not any(c.is_alive() for c in clients)
    assert tally.failed == [], f"{len(tally.failed)} requests got no response: {tally.failed[:5]}"
    assert tally.statuses().keys() == {200}
    assert tally.refused == N_CLIENTS  # each client ended when the port closed, not before
    assert tally.answered_after(signalled) > N_CLIENTS  # the delay served new requests
    assert took < 0.5 + 10 + 5  # delay + grace + the stop's own bounded steps


# --- the sequence, step by step -----------------------------------------------------------------


def test_readiness_goes_first_then_new_requests_are_served_until_the_delay_ends(worker) -> None:
    w = worker(delay=2.0, grace=10)
    w.proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    # step 1: /readyz fails at once
    while w.request("GET", "/readyz").status != 503:
        assert time.monotonic() - began < 0.5, "readiness did not turn at once"
    # step 2: new connections and requests are still served, and told to close
    response = post(w, "/work")
    assert response.status == 200 and response.getheader("connection") == "close"
    # an in-flight request that outlives the delay still gets its answer (step 4)
    long = threading.Thread(target=lambda: results.append(post(w, "/work?ms=2500").status))
    results: list[int] = []
    long.start()
    time.sleep(2.0 + 1.0)  # past the delay and the stop's queue and linger steps
    # step 3: the port refuses new connections (at once: it is shut down, not just unread)
    refused_at = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", w.port), timeout=5).close()
    assert time.monotonic() - refused_at < 0.5
    long.join(timeout=10)
    assert results == [200]
    w.wait(timeout=10)


def test_grace_period_bounds_the_wait_for_in_flight_requests(worker) -> None:
    w = worker(delay=0, grace=1.0)
    results: list[str] = []

    def slow() -> None:
        try:
            results.append(str(post(w, "/work?ms=20000").status))
        except (OSError, http.client.HTTPException) as exc:
            results.append(type(exc).__name__)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    w.proc.send_signal(signal.SIGTERM)
    took = w.wait(timeout=15)
    t.join(timeout=5)
    assert took < 1.0 + 5  # grace + the stop's steps, far below the request's 20 s
    assert results and results[0] != "200"  # cut off after the grace period


def test_a_second_ctrl_c_skips_the_rest_of_the_delay(worker) -> None:
    w = worker(delay=60, grace=10)
    w.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert w.request("GET", "/readyz").status == 503
    w.proc.send_signal(signal.SIGINT)
    assert w.wait(timeout=10) < 5


def test_a_second_sigterm_changes_nothing(worker) -> None:
    w = worker(delay=1.0, grace=10)
    w.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    w.proc.send_signal(signal.SIGTERM)
    assert post(w, "/work").status == 200  # still in the delay: served
    w.wait(timeout=15)


# --- the pieces -------------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="the SYN filter and TCP_INFO are Linux's")
def test_listener_gate_keeps_completed_connections_and_refuses_new_ones() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = listener.getsockname()
        early = socket.create_connection(address)
        early.sendall(b"ping")
        gate = ListenerGate(listener)
        assert gate.pending() == 1
        assert gate.refuse_handshakes()
        late = socket.socket()
        late.settimeout(0.3)
        with pytest.raises(TimeoutError):  # its SYN is dropped: no handshake, no queue entry
            late.connect(address)
        late.close()
        assert gate.pending() == 1
        accepted, _ = listener.accept()  # the completed one is still there, data and all
        assert accepted.recv(4) == b"ping"
        accepted.sendall(b"pong")  # accepted sockets inherit the filter: data still flows
        assert early.recv(4) == b"pong"
        assert gate.pending() == 0
        gate.stop_listening()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2)
        accepted.close()
        early.close()


def test_draining_middleware_adds_connection_close_only_while_draining() -> None:
    flag = threading.Event()
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        headers = [(b"connection", b"keep-alive")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message) -> None:
        sent.append(message)

    middleware = DrainingMiddleware(app, flag=flag)
    asyncio.run(middleware({"type": "http"}, None, send))
    assert sent[0]["headers"] == [(b"connection", b"keep-alive")]
    flag.set()
    sent.clear()
    asyncio.run(middleware({"type": "http"}, None, send))
    assert sent[0]["headers"] == [(b"connection", b"close")]
    assert json.loads(sent[1]["body"]) == {}
