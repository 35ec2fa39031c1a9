"""Slow HTTP clients are cut off: a deadline for a request's headers and one for its body.

uvicorn (BentoML 1.4's HTTP server) has no read timeout. ``timeout_keep_alive`` only covers
the idle time between requests and stops at a request's first byte, so a client that trickles
its headers or its body one byte at a time held a connection (and a slot of the worker) for as
long as it liked: 200 such connections stayed open 87 s in issue 13 (a connection that sent
nothing at all was never closed). uvicorn's own plan for this (``--timeout-request-start``,
uvicorn issue 157) was never built. Two layers close the gap:

- **Headers** (``SCULPT_HTTP_HEADER_TIMEOUT_S``): an ASGI app is only called once the headers
  are complete, so this is done in uvicorn's HTTP protocol: :func:`install_header_timeout`
  swaps the running server's protocol class for a subclass with a deadline. The clock starts
  when a connection opens, and on a kept-alive connection at the first byte of the next
  request (the idle wait before it stays ``timeout_keep_alive``'s); it stops when the request
  line and headers are parsed. On expiry the connection gets a 408 and is closed. Works over
  both of uvicorn's HTTP/1.1 implementations (h11 and httptools).
- **Body** (``SCULPT_HTTP_BODY_TIMEOUT_S``): :class:`BodyTimeout`, ASGI middleware, counts the
  time the app spends waiting in ``receive()`` for body chunks; past the limit it answers 408
  (with ``Connection: close``) and tells the app the client went away. Only the client's
  slowness counts: time the request spends queued for a worker thread does not.

BentoML's ``traffic.timeout`` (60 s, a 504) still bounds a request as a whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sculptserve.serving.http.worker import running_uvicorn_server
from sculptserve.serving.settings import load_settings

__all__ = ["BodyTimeout", "header_deadline_protocol", "install_header_timeout"]

log = logging.getLogger(__name__)


def _error_json(text: str) -> bytes:
    return json.dumps({"error": text}).encode("utf-8")


def request_timeout_response(text: str) -> bytes:
    """A complete ``408 Request Timeout`` HTTP/1.1 response with a JSON reason, closing."""
    body = _error_json(text)
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


# --- headers: in uvicorn's protocol -----------------------------------------------------------


class _HeaderDeadline:
    """Mixin over a uvicorn HTTP/1.1 protocol class: a deadline for each request's headers.

    Relies on what uvicorn's h11 and httptools protocols share: ``cycle`` (replaced by a new
    request-response cycle once a request's headers are parsed), ``transport``, ``loop`` and
    the ``connection_made`` / ``data_received`` / ``connection_lost`` hooks.
    """

    header_timeout_s: float = 10.0
    # set by the protocol class this is mixed into
    cycle: Any
    transport: Any
    loop: asyncio.AbstractEventLoop

    _header_clock: asyncio.TimerHandle | None = None
    _waiting_cycle: Any = None  # the cycle that was current when the clock started

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        if self._header_clock is None and self._between_requests():
            self._start_header_clock()  # the first byte of the next request on this connection
        super().data_received(data)  # type: ignore[misc]
        if self._header_clock is not None and self.cycle is not self._waiting_cycle:
            self._stop_header_clock()  # a new cycle: the headers are in

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)  # type: ignore[misc]

    def _between_requests(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        self._waiting_cycle = self.cycle
        self._header_clock = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None

    def _headers_too_slow(self) -> None:
        self._header_clock = None
        transport = self.transport
        # A request that arrived meanwhile (pipelined), a closing connection or one upgraded
        # to another protocol is none of this clock's business.
        if self.cycle is not self._waiting_cycle or transport.is_closing():
            return
        if transport.get_protocol() is not self:
            return
        peer = transport.get_extra_info("peername")
        log.info("closing %s: request headers not complete after %g s", peer, self.header_timeout_s)
        transport.write(
            request_timeout_response(
                f"request headers not received within {self.header_timeout_s:g} s"
            )
        )
        transport.close()


def header_deadline_protocol(base: type[Any], timeout_s: float) -> type[Any]:
    """``base`` (a uvicorn HTTP protocol class) with a ``timeout_s`` deadline on headers."""
    if issubclass(base, _HeaderDeadline):  # re-installed: wrap the original class once
        base = next(c for c in base.__mro__[1:] if not issubclass(c, _HeaderDeadline))
    name = f"HeaderDeadline{base.__name__}"
    return type(name, (_HeaderDeadline, base), {"header_timeout_s": float(timeout_s)})


def install_header_timeout(timeout_s: float, server: uvicorn.Server | None = None) -> bool:
    """Give the running uvicorn server's new connections a header deadline of ``timeout_s``.

    Call it before the server listens (BentoML: in the service's ``__init__``, which runs in
    the ASGI lifespan startup; uvicorn creates each connection's protocol from
    ``config.http_protocol_class`` at accept time). False, changing nothing, outside uvicorn.
    """
    server = server if server is not None else running_uvicorn_server()
    if server is None:
        return False
    config = server.config
    if not config.loaded:
        config.load()
    config.http_protocol_class = header_deadline_protocol(config.http_protocol_class, timeout_s)
    return True


# --- body: ASGI middleware --------------------------------------------------------------------


class BodyTimeout:
    """Answer 408 when a request body takes longer than ``timeout_s`` to arrive.

    The budget is the total time the app waits in ``receive()`` until the last body chunk
    (``more_body`` false); after it, ``receive()`` passes through untouched (apps wait there
    for a disconnect). On expiry: a 408 JSON response with ``Connection: close`` if the app
    has not started one, and ``http.disconnect`` to the app, whose own response is then dropped.
    Constructed by BentoML without arguments, it reads the limit from the settings.
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float | None = None) -> None:
        self.app = app
        self.timeout_s = load_settings().http_body_timeout_s if timeout_s is None else timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        waited = 0.0
        body_done = expired = started = False

        async def timed_receive() -> Message:
            nonlocal waited, body_done, expired
            if expired:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            began = loop.time()
            try:
                async with asyncio.timeout(self.timeout_s - waited):
                    message = await receive()
            except TimeoutError:
                expired = True
                if not started:
                    await self._send_timeout(send)
                return {"type": "http.disconnect"}
            finally:
                waited += loop.time() - began
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if expired:
                return  # the 408 is out; drop the app's reaction to the disconnect
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)

    async def _send_timeout(self, send: Send) -> None:
        body = _error_json(f"request body not received within {self.timeout_s:g} s")
        await send(
            {
                "type": "http.response.start",
                "status": 408,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
