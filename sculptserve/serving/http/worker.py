"""The uvicorn server a BentoML worker runs the service in, found from inside the service.

BentoML 1.4's worker (``_bentoml_impl/worker/service.py``) builds its ``uvicorn.Config`` and
``uvicorn.Server`` itself, with no hook for a service to reach them; yet the shutdown drain
(:mod:`sculptserve.serving.http.shutdown`) must take over the server's SIGTERM handling and
bound its graceful shutdown, and the header timeout (:mod:`sculptserve.serving.http.timeouts`)
must wrap its HTTP protocol class. Both find the server here.

How: ``uvicorn.Server.serve`` installs its bound method ``handle_exit`` as the SIGINT and
SIGTERM handler (``signal.signal``, in ``capture_signals``) before the ASGI lifespan starts,
and BentoML creates the service instance in that lifespan's startup. So while the service
initializes, the SIGTERM handler's ``__self__`` is the running server, or, once the drain has
taken the signal over, an object whose ``uvicorn_server`` is. Anything else (no uvicorn:
``TestClient``, a plain import) gives None and the callers leave everything as it is.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

import uvicorn

__all__ = ["listening_sockets", "running_uvicorn_server"]


def running_uvicorn_server() -> uvicorn.Server | None:
    """The uvicorn server whose signal handler is installed in this process, if any."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if isinstance(owner, uvicorn.Server):
        return owner
    server = getattr(owner, "uvicorn_server", None)  # a handler that took over from uvicorn's
    return server if isinstance(server, uvicorn.Server) else None


def listening_sockets(server: uvicorn.Server) -> list[Any]:
    """The TCP sockets ``server`` accepts HTTP connections on (asyncio's ``TransportSocket``
    views of them: ``fileno()``, ``getsockopt``, ...). Empty before it started listening."""
    found = []
    for listener in getattr(server, "servers", None) or []:
        for sock in listener.sockets or ():
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                found.append(sock)
    return found
