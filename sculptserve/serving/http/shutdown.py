"""The shutdown drain of a BentoML worker: readiness first, then serve on, then stop cleanly.

What went wrong before (issue 13, finding 5): on SIGTERM uvicorn stopped accepting at once and
closed idle keep-alive connections, while BentoML's circus arbiter, which owns the listening
socket, kept it open until the worker had exited. The kernel went on completing handshakes
into a queue nobody read, and reset them all when the arbiter closed the socket: 62 requests
sent just after SIGTERM got a connection reset instead of a response.

The sequence :class:`Drain` runs instead, on the first SIGTERM or SIGINT:

1. **Not ready, at once.** /readyz answers 503 (the service's ``__is_ready__`` reads
   :attr:`Drain.draining`) and gRPC health turns NOT_SERVING for good (``on_start``).
2. **Serve on for ``delay_s``** (``SCULPT_SHUTDOWN_DELAY_S``): new connections and requests
   are still accepted and served, so clients routed here before the balancers noticed still
   get answers; every HTTP response now carries ``Connection: close``
   (:class:`DrainingMiddleware`), so keep-alive clients reconnect (elsewhere) rather than
   reuse a connection this server is about to close.
3. **Stop accepting without dropping anything.** A socket filter makes the kernel ignore new
   SYNs on the listening socket (clients retry and then find it closed; Linux), the
   connections the kernel had already completed are accepted and get a short linger to send
   their request, and only then is uvicorn told to stop (it closes its listener and idle
   connections). The socket is then shut down for every process sharing it, so later
   clients are refused at once instead of being queued. gRPC stops in parallel
   (``on_stop``): new calls UNAVAILABLE, in-flight ones finish.
4. **Finish in-flight and queued requests within ``grace_s``** (``SCULPT_SHUTDOWN_GRACE_S``,
   set as uvicorn's ``timeout_graceful_shutdown``); what is still running after is
   cancelled. Then the ASGI lifespan shutdown runs (the service's ``close``) and the
   worker exits; the arbiter follows.

A second SIGINT (Ctrl-C again) cuts the drain short: uvicorn is told to stop at once (in-flight
requests still get the grace period; one more SIGINT is uvicorn's forced exit). A second SIGTERM
changes nothing. Outside a uvicorn worker :meth:`Drain.install` does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sculptserve.serving.http.worker import listening_sockets, running_uvicorn_server

__all__ = [
    "DRAINING",
    "Drain",
    "DrainingMiddleware",
    "ListenerGate",
    "worst_case_shutdown_s",
]

log = logging.getLogger(__name__)


# Set once this process has started draining: a process receives the signal, so the state is
# the process's. DrainingMiddleware (built by BentoML before the service exists) reads it.
DRAINING = threading.Event()

# Step 3's bounds: the longest wait for the kernel's completed connections to be accepted,
# the time the last accepted ones get to send their request before uvicorn closes idle
# connections, and the longest wait for uvicorn to close its listener.
ACCEPT_QUEUE_WAIT_S = 1.0
LINGER_S = 0.5
LISTENER_CLOSE_WAIT_S = 2.0
_POLL_S = 0.02

# after the grace period: the lifespan shutdown (gRPC already stopped, the app's workers join)
CLOSE_ALLOWANCE_S = 5.0


def worst_case_shutdown_s(delay_s: float, grace_s: float, *, beside_s: float = 0.0) -> float:
    """The longest a worker takes from SIGTERM to exit with these settings (Kubernetes'
    ``terminationGracePeriodSeconds`` must cover it, plus the preStop sleep). ``beside_s``:
    the longest a front end stopped beside HTTP (gRPC's ``on_stop``) runs before its own
    grace period starts."""
    accept_then_stop = ACCEPT_QUEUE_WAIT_S + LINGER_S + max(LISTENER_CLOSE_WAIT_S, beside_s)
    return delay_s + accept_then_stop + grace_s + CLOSE_ALLOWANCE_S


# --- the listening socket ---------------------------------------------------------------------

_SO_ATTACH_FILTER = 26  # linux/filter.h; not exported by Python's socket module
_TCP_INFO_UNACKED = 24  # offset of tcpi_unacked: a listener's accept queue length


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


# Classic BPF run on each TCP segment that reaches the listener, with the TCP header at offset
# 0: drop segments with SYN set (new handshakes), keep the rest (the final ACKs of handshakes
# already under way). Accepted sockets inherit the filter, and never see a SYN.
_DROP_SYN = (_SockFilter * 4)(
    _SockFilter(0x30, 0, 0, 13),  # ldb [13]: the TCP flags byte
    _SockFilter(0x45, 0, 1, 0x02),  # jset #SYN: drop, else keep
    _SockFilter(0x06, 0, 0, 0),  # ret #0: drop
    _SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: keep the whole segment
)


class ListenerGate:
    """Closes a listening TCP socket, shared with other processes, without resetting any
    connection the kernel has already completed.

    Closing (or shutting down) a listener resets the connections still waiting in its accept
    queue. :meth:`refuse_handshakes` first stops new ones from joining it (Linux: a socket
    filter dropping SYNs; clients retransmit the SYN later), the owner accepts what is queued
    (:meth:`pending` counts it), then :meth:`stop_listening` shuts the socket down for every
    process that holds it (BentoML's arbiter keeps its own descriptor open until the end), so
    later clients are refused at once.
    """

    def __init__(self, sock: Any) -> None:
        # our own descriptor: usable after the server closed its own
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))

    def refuse_handshakes(self) -> bool:
        """Stop completing new connections; False where this system cannot (not Linux)."""
        if not sys.platform.startswith("linux"):
            return False
        program = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(_DROP_SYN))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
        except OSError as exc:
            log.warning("cannot filter new connections on the listener: %s", exc)
            return False
        return True

    def pending(self) -> int | None:
        """Connections completed by the kernel but not accepted yet (None: unknown)."""
        tcp_info = getattr(socket, "TCP_INFO", None)
        if tcp_info is None:
            return None
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 104)
        except OSError:
            return None
        return int(struct.unpack_from("I", info, _TCP_INFO_UNACKED)[0])

    def stop_listening(self) -> None:
        """Take the socket out of the listening state for every holder, and let go of it."""
        with contextlib.suppress(OSError):  # not listening any more, or not supported here
            self._sock.shutdown(socket.SHUT_RD)
        self._sock.close()


async def _until(done: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
    return True


# --- the drain ------------------------------------------------------------------------------


class Drain:
    """The shutdown sequence of one uvicorn worker (see the module docstring).

    ``on_start()`` runs when draining begins (gRPC health NOT_SERVING); ``on_stop(grace_s)``
    when the server stops accepting (gRPC's graceful stop). Both block, so they run in a
    thread. ``flag`` is the event :class:`DrainingMiddleware` reads (default :data:`DRAINING`).
    """

    def __init__(
        self,
        *,
        delay_s: float,
        grace_s: float,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[float], None] | None = None,
        flag: threading.Event | None = None,
    ) -> None:
        self.delay_s = float(delay_s)
        self.grace_s = float(grace_s)
        self._on_start = on_start
        self._on_stop = on_stop
        self._flag = DRAINING if flag is None else flag
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_requested = False

    @property
    def draining(self) -> bool:
        return self._flag.is_set()

    @property
    def uvicorn_server(self) -> uvicorn.Server | None:
        """The server this drain took the signals over from (None before :meth:`install`)."""
        return self._server

    def install(self, server: uvicorn.Server | None = None) -> bool:
        """Take over the running uvicorn server's SIGTERM and SIGINT handling.

        Call it in the server's event loop thread (BentoML: the service's ``__init__``). False,
        changing nothing, outside a uvicorn worker or off the main thread.
        """
        server = server if server is not None else running_uvicorn_server()
        if server is None or threading.current_thread() is not threading.main_thread():
            log.info("not in a uvicorn worker's main thread: no shutdown drain")
            return False
        self._server = server
        self._loop = asyncio.get_running_loop()
        # uvicorn bounds its wait for in-flight requests with this; BentoML leaves it unset.
        server.config.timeout_graceful_shutdown = self.grace_s  # type: ignore[assignment]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return True

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # A Python-level handler: runs in the main thread (the loop's) between bytecodes.
        assert self._loop is not None
        if not self._flag.is_set():
            self._flag.set()
            self._loop.call_soon_threadsafe(self._begin, sig)
        elif sig == signal.SIGINT:
            self._loop.call_soon_threadsafe(self._force, sig)
        else:
            log.info("signal %d while draining: already stopping", sig)

    def _begin(self, sig: int) -> None:
        log.warning(
            "signal %d: draining (/readyz 503, gRPC NOT_SERVING); serving new requests %g s "
            "more, then in-flight ones get %g s (a second SIGINT: stop now)",
            sig,
            self.delay_s,
            self.grace_s,
        )
        self._task = asyncio.get_running_loop().create_task(self._run(sig), name="sculpt-drain")

    def _force(self, sig: int) -> None:
        log.warning("signal %d again: stopping now", sig)
        if self._task is not None and not self._stop_requested:
            self._task.cancel()
        self._stop_server(sig)

    def _stop_server(self, sig: int) -> None:
        """Hand the signal to uvicorn's own handler (a second SIGINT: its forced exit)."""
        assert self._server is not None
        self._stop_requested = True
        self._server.handle_exit(sig, None)

    async def _run(self, sig: int) -> None:
        try:
            await self._drain(sig)
        except Exception:  # whatever failed, the worker must still stop
            log.exception("the shutdown drain failed; stopping without it")
        finally:
            if not self._stop_requested:
                self._stop_server(sig)

    async def _drain(self, sig: int) -> None:
        assert self._server is not None
        if self._on_start is not None:
            try:
                await asyncio.to_thread(self._on_start)
            except Exception:  # gRPC health stays as it was; HTTP drains all the same
                log.exception("could not turn gRPC health NOT_SERVING")
        await asyncio.sleep(self.delay_s)
        gates = [ListenerGate(s) for s in listening_sockets(self._server)]
        if gates and all(g.refuse_handshakes() for g in gates):
            accepted = await _until(
                lambda: all(g.pending() == 0 for g in gates), ACCEPT_QUEUE_WAIT_S
            )
            if not accepted:
                log.warning("connections still queued after %g s", ACCEPT_QUEUE_WAIT_S)
            await asyncio.sleep(LINGER_S)
        stopping = None
        if self._on_stop is not None:
            stopping = asyncio.create_task(asyncio.to_thread(self._on_stop, self.grace_s))
        self._stop_server(sig)
        servers = getattr(self._server, "servers", [])
        # Shut the socket down only once uvicorn stopped accepting on it: a listener that is
        # still watched but no longer listening would fail every accept() in a loop.
        await _until(lambda: not any(s.is_serving() for s in servers), LISTENER_CLOSE_WAIT_S)
        for gate in gates:
            gate.stop_listening()
        if stopping is not None:
            await stopping


# --- Connection: close while draining ---------------------------------------------------------


class DrainingMiddleware:
    """While the process drains, every HTTP response says ``Connection: close``.

    A keep-alive client then opens its next connection anew (through the balancer, to another
    replica) instead of reusing one this server will close: closing an idle keep-alive
    connection races with a request the client may be sending on it.
    """

    def __init__(self, app: ASGIApp, *, flag: threading.Event | None = None) -> None:
        self.app = app
        self._flag = DRAINING if flag is None else flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self._flag.is_set():
                kept = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*kept, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)
