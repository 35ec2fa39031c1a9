"""What every servicer of the gRPC server shares: client errors -> status codes, the response cap.

- :func:`guarded` wraps a servicer method: a client error (:data:`CLIENT_ERRORS`) becomes its
  status with its message, logged in one INFO line (:func:`log_client_error`), never a
  traceback; anything else is logged with its traceback and answered with a generic
  ``INTERNAL``, and the server keeps serving.
- :class:`ResponseBudget` refuses, before the model runs, a request whose response would
  exceed ``ServiceLimits.max_grpc_response_bytes`` (``RESOURCE_EXHAUSTED``, naming the limit
  and how many items fit).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from sculptserve.serving.errors import PayloadError
from sculptserve.serving.oip import ModelNotFound
from sculptserve.serving.settings import Settings

__all__ = [
    "CLIENT_ERRORS",
    "ResponseBudget",
    "ResponseTooLarge",
    "guarded",
    "log_client_error",
]

# The server's logger, whichever servicer a line comes from: one name to filter gRPC request
# lines on, as before these helpers moved out of server.py.
log = logging.getLogger("sculptserve.serving.grpc.server")

_INTERNAL_MESSAGE = "internal server error; the server log has the details"
_LOGGED_MESSAGE_CHARS = 300  # a client error's log line quotes at most this much of the message
# Protobuf framing of one response besides its arrays' bytes: field tags, length varints (<= 10
# bytes each), tensor shapes and dtype names, the encoding, the seed, model names. A few
# hundred bytes at most for every response; counted generously so the size estimate is an upper
# bound (an echoed client string, the Open Inference Protocol's request id, comes on top).
RESPONSE_FRAMING_BYTES = 1024

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


class ResponseTooLarge(PayloadError):
    """The response would exceed ``ServiceLimits.max_grpc_response_bytes``."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


@dataclass(frozen=True)
class ResponseBudget:
    """The largest response message this server sends (``ServiceLimits.max_grpc_response_bytes``).

    A default gRPC client refuses a message over 4 MiB after the server did all the work, with
    an error that names neither the cause nor the cure; this refuses such a request up front.
    """

    limit: int

    def check(self, rpc: str, n: int, item_bytes: int, noun: str, extra_bytes: int = 0) -> None:
        """Refuse ``n`` items of at most ``item_bytes`` wire bytes each (plus ``extra_bytes``
        once) when their response could exceed the limit (a ResponseTooLarge naming the limit
        and how many fit)."""
        fixed = RESPONSE_FRAMING_BYTES + extra_bytes
        size = fixed + n * item_bytes
        if size <= self.limit:
            return
        fit = max(0, (self.limit - fixed) // item_bytes)
        raise ResponseTooLarge(
            f"{rpc} of {n} {noun} would answer up to {_mib(size)} ({item_bytes} bytes per item), "
            f"over the gRPC response limit of {self.limit} bytes ({_mib(self.limit)}, "
            f"{Settings.variable('grpc_response_max_bytes')}); at most {fit} {noun} fit in one "
            "response: split the request"
        )


# Client errors and their status, most specific first; any other exception is INTERNAL.
CLIENT_ERRORS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (ResponseTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (PayloadError, grpc.StatusCode.INVALID_ARGUMENT),
)


def _client_status(exc: Exception) -> grpc.StatusCode | None:
    return next((code for kind, code in CLIENT_ERRORS if isinstance(exc, kind)), None)


def log_client_error(rpc: str, peer: str, code: grpc.StatusCode, message: str) -> None:
    """One line per client error, no traceback: a client's mistakes must not flood the log.
    Whitespace is collapsed, so a client-chosen string cannot forge log lines."""
    text = " ".join(message.split())[:_LOGGED_MESSAGE_CHARS]
    log.info("gRPC %s from %s: %s: %s", rpc, peer, code.name, text)


def guarded(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map client errors to their status (logged in one line) and any other failure to
    INTERNAL (logged with its traceback)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:
            code = _client_status(exc)
            if code is None:
                log.exception("gRPC %s failed", method.__name__)
                code, message = grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE
            else:
                message = str(exc)
                log_client_error(method.__name__, context.peer(), code, message)
        # abort raises; called outside the except block so its exception is not caught above
        await context.abort(code, message)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper
