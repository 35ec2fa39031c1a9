"""Clients that keep sending requests through a server's shutdown, and what became of each.

The tally separates the outcomes the shutdown tests care about:

- **answered**: a complete HTTP response (any status; the tests check them) or a gRPC status
  the server sent on purpose (OK);
- **refused**: the connection was refused, or gRPC said UNAVAILABLE: the server was no longer
  accepting, so the request was never accepted (behind a balancer it goes to another replica);
- **failed**: everything else, above all a request sent on an accepted connection that got
  no response (a reset, a close without a response, a timeout): what issue 13 found 62 of.

HTTP clients use one keep-alive connection each (``http.client``), open a new one when the
server says ``Connection: close``, and stop at their first refusal.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc


@dataclass
class Tally:
    answered: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, status)
    refused: int = 0
    failed: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answer(self, status: int) -> None:
        with self._lock:
            self.answered.append((time.monotonic(), status))

    def refuse(self) -> None:
        with self._lock:
            self.refused += 1

    def fail(self, what: str) -> None:
        with self._lock:
            self.failed.append(what)

    def statuses(self) -> Counter[int]:
        return Counter(status for _, status in self.answered)

    def answered_after(self, t: float) -> int:
        return sum(1 for when, _ in self.answered if when > t)


def http_client(
    port: int,
    path: str,
    body: bytes,
    tally: Tally,
    stop: threading.Event,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """POST ``body`` to ``path`` again and again until refused (or ``stop``)."""
    send_headers = {"content-type": "application/json", **(headers or {})}
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                conn.connect()
            except ConnectionRefusedError:
                tally.refuse()
                return
            except OSError as exc:  # not refused, not accepted either: nothing expects this
                tally.fail(f"connect: {type(exc).__name__}: {exc}")
                return
        try:
            conn.request("POST", path, body, send_headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.fail(f"request: {type(exc).__name__}: {exc}")
            conn.close()
            conn = None
            continue
        tally.answer(response.status)
        if response.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def grpc_client(call, request, tally: Tally, stop: threading.Event, timeout: float = 30.0) -> None:
    """``call(request)`` again and again until UNAVAILABLE, another error (or ``stop``)."""
    while not stop.is_set():
        try:
            call(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                tally.refuse()
                return
            tally.fail(f"gRPC {exc.code().name}: {exc.details()}")
            return
        tally.answer(0)


def start(targets: list[threading.Thread]) -> list[threading.Thread]:
    """Start the client threads (daemons: a failing test must not hang the run)."""
    for t in targets:
        t.daemon = True
        t.start()
    return targets
