"""Slow HTTP clients are cut off while normal ones are served (issue 13, finding 6).

Before: 200 connections trickling headers or bodies stayed open 87 s, and one that sent
nothing was never closed. The header deadline lives in uvicorn's protocol, so it is tested on
a real uvicorn worker (tests/uvicorn_worker.py; through `sculpt serve` in
tests/test_serve_subprocess.py); the body deadline is ASGI middleware, tested there and
in-process.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from drain_clients import Tally, http_client, start
from uvicorn_worker import Worker, launch

from sculptserve.serving.http.timeouts import BodyTimeout

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
TRICKLE_EVERY_S = 0.2
N_SLOW = 20


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = launch(header_timeout=HEADER_TIMEOUT_S, body_timeout=BODY_TIMEOUT_S, delay=0)
    yield w
    w.kill()


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """(everything the server sent, seconds until it closed the connection)."""
    began = time.monotonic()
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, TimeoutError):  # a timeout: the test sees the elapsed time
        pass
    return received, time.monotonic() - began


def trickle(port: int, head: bytes, drip: bytes, results: list, stop: threading.Event) -> None:
    """Send ``head``, then ``drip`` every TRICKLE_EVERY_S until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    began = time.monotonic()
    sock.sendall(head)
    try:
        while not stop.wait(TRICKLE_EVERY_S):
            sock.sendall(drip)
    except OSError:  # closed by the server: what we wait for
        pass
    received, _ = read_until_closed(sock, 1.0)
    results.append((time.monotonic() - began, received))
    sock.close()


def slow_clients(port: int, head: bytes, drip: bytes) -> Callable[[], list]:
    """N_SLOW trickling connections; the returned function waits for them to be cut off."""
    results: list = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=trickle, args=(port, head, drip, results, stop), daemon=True)
        for _ in range(N_SLOW)
    ]
    for t in threads:
        t.start()

    def finish() -> list:
        deadline = time.monotonic() + max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 5
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stop.set()  # a connection still open here fails the test below
        return results

    return finish


@pytest.mark.parametrize(
    ("kind", "head", "drip", "limit"),
    [
        ("headers", b"POST /work HTTP/1.1\r\nhost: x\r\n", b"x-pad: 1\r\n", HEADER_TIMEOUT_S),
        (
            "body",
            b"POST /work HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n",
            b" ",
            BODY_TIMEOUT_S,
        ),
    ],
)
def test_tricklers_are_cut_off_while_normal_clients_are_served(
    worker: Worker, kind: str, head: bytes, drip: bytes, limit: float
) -> None:
    finish = slow_clients(worker.port, head, drip)
    tally, stop = Tally(), threading.Event()
    normal = start(
        [threading.Thread(target=http_client, args=(worker.port, "/work", b"{}", tally, stop))]
    )
    results = finish()
    stop.set()
    normal[0].join(timeout=10)
    assert len(results) == N_SLOW, f"{N_SLOW - len(results)} {kind} tricklers were never cut off"
    for took, received in results:
        assert limit <= took < limit + 2.0, took  # the deadline, with scheduling slack
        assert received.startswith(b"HTTP/1.1 408 "), received[:80]
        error = json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
        assert f"within {limit:g} s" in error and kind[:4] in error
    # the normal client went on being served the whole time
    assert tally.failed == [] and tally.statuses().keys() == {200}
    assert len(tally.answered) >= 10


def test_a_connection_that_sends_nothing_is_closed(worker: Worker) -> None:
    with socket.create_connection(("127.0.0.1", worker.port)) as sock:
        received, took = read_until_closed(sock, 5.0)
    assert HEADER_TIMEOUT_S <= took < HEADER_TIMEOUT_S + 2.0
    assert received.startswith(b"HTTP/1.1 408 ")


def test_kept_alive_connection_is_not_cut_for_idling_between_requests(worker: Worker) -> None:
    """The header clock starts at a request's first byte, not when the previous response
    ended: idling below the keep-alive timeout (5 s) is not slowness."""
    request = b"POST /work HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", worker.port)) as sock:
        sock.settimeout(5)
        for _ in range(2):
            sock.sendall(request)
            assert response_status(sock) == 200
            time.sleep(HEADER_TIMEOUT_S + 0.5)  # longer than the header deadline
        # a request whose headers arrive in pieces, in time, is fine too
        sock.sendall(request[:10])
        time.sleep(HEADER_TIMEOUT_S / 3)
        sock.sendall(request[10:])
        assert response_status(sock) == 200


def response_status(sock: socket.socket) -> int:
    """Read one whole HTTP response from ``sock``; its status."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


# --- BodyTimeout in-process -------------------------------------------------------------------


def run_asgi(app, messages: list[tuple[float, dict]]) -> tuple[list[dict], list[dict]]:
    """Run ``app`` with receive() giving ``messages`` (each after its delay in seconds);
    return (what the app received, what was sent)."""
    received, sent = [], []

    async def main() -> None:
        queue = list(messages)

        async def receive() -> dict:
            if not queue:
                await asyncio.sleep(3600)  # a client that sends nothing more
            delay, message = queue.pop(0)
            await asyncio.sleep(delay)
            return message

        async def send(message: dict) -> None:
            sent.append(message)

        async def inner(scope, receive, send) -> None:
            while True:
                message = await receive()
                received.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    break
            await asyncio.sleep(0.2)  # work after the body: never counted
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        await (app or BodyTimeout)(inner, timeout_s=0.3)({"type": "http"}, receive, send)

    asyncio.run(main())
    return received, sent


def chunk(body: bytes, more: bool) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


def test_body_timeout_counts_only_the_wait_for_the_body() -> None:
    # three chunks, 0.2 s apart: 0.4 s of waiting in all, over the 0.3 s budget
    slow = [(0.0, chunk(b"a", True)), (0.2, chunk(b"b", True)), (0.2, chunk(b"c", False))]
    received, sent = run_asgi(None, slow)
    assert received[-1] == {"type": "http.disconnect"}
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert len(sent) == 2  # the app's own 200 after the disconnect was dropped
    # the same body in time: served, and the 0.2 s of work after it is not counted
    fast = [(0.0, chunk(b"a", True)), (0.1, chunk(b"b", True)), (0.1, chunk(b"c", False))]
    received, sent = run_asgi(None, fast)
    assert [m["body"] for m in received] == [b"a", b"b", b"c"]
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
