"""Pure ASGI middleware for the REST service: optional API key and a request body limit.

BentoML 1.4 has neither built in, so both live here, in front of every route
(``SculptService.add_asgi_middleware(HttpGuard)``):

- **API key** (``SCULPT_API_KEY``): when set, every route except the health (BentoML's and the
  Open Inference Protocol's ``/v2/health/*``), metrics and docs routes needs
  ``Authorization: Bearer <key>``; otherwise 401 with a JSON reason. The
  comparison is constant-time (``hmac.compare_digest``) so response timing leaks nothing.
- **Body limit** (``SCULPT_REQUEST_MAX_BYTES``, default 8 MiB, see ``ServiceLimits``): a
  ``Content-Length`` over the limit is answered 413 before any byte of the body is read; a body
  without one (chunked) is counted while it streams and answered 413 once it passes the limit.

Error bodies are ``{"error": "...", "error_type": "..."}`` (:mod:`sculptserve.serving.http.errors`),
like every other error of the REST API, and each rejection is one INFO log line. The
middleware takes its key and limit as arguments; without them (BentoML constructs it when the
ASGI app is built) it loads them once, at construction, through
:func:`sculptserve.serving.settings.load_settings`.
"""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sculptserve.serving.http.errors import ErrorType, send_error
from sculptserve.serving.settings import load_settings

log = logging.getLogger(__name__)


# Probes, scrapes and docs must work without the key (orchestrators and Prometheus have none);
# the Open Inference Protocol's health routes are probes too (KServe points its probes there).
OPEN_PATHS = frozenset(
    {
        "/livez",
        "/readyz",
        "/healthz",
        "/metrics",
        "/docs.json",
        "/docs",
        "/v2/health/live",
        "/v2/health/ready",
    }
)


class HttpGuard:
    """API key check and body size limit for HTTP requests; other scopes pass through."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None = None, max_body_bytes: int | None = None
    ) -> None:
        self.app = app
        if api_key is None or max_body_bytes is None:
            settings = load_settings()
            api_key = settings.api_key if api_key is None else api_key
            if max_body_bytes is None:
                max_body_bytes = settings.request_max_bytes
        # An empty key means "no auth", not "the empty string is the key".
        self.api_key: bytes | None = api_key.encode("utf-8") if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and not self._authorized(scope):
            await self._reject(
                scope,
                send,
                ErrorType.UNAUTHORIZED,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                [("www-authenticate", "Bearer")],
            )
            return
        length = self._content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self._reject(scope, send, ErrorType.PAYLOAD_TOO_LARGE, self._too_large(length))
            return
        await self._call_counted(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path.rstrip("/") in OPEN_PATHS or path == "/docs/":
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(token.strip(), self.api_key or b"")
                return False
        return False

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None  # the server rejects a malformed header itself
        return None

    def _too_large(self, length: int | None) -> str:
        got = f" ({length} bytes)" if length is not None else ""
        return (
            f"request body too large{got}: the limit is {self.max_body_bytes} bytes; "
            "split the batch or use the compact base64 input forms"
        )

    @staticmethod
    async def _reject(
        scope: Scope,
        send: Send,
        error_type: ErrorType,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        log.info("%s %s: %s: %s", scope.get("method"), scope.get("path"), error_type, message)
        await send_error(send, error_type, message, headers or [])

    async def _call_counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a receive() that counts body bytes, whatever Content-Length said.

        Once the count passes the limit we answer 413 ourselves and tell the app the client
        disconnected; raising instead would reach BentoML's catch-all and become a 500.
        """
        received = 0
        started = False
        rejected = False

        async def counted_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    rejected = True
                    if not started:
                        await self._reject(
                            scope, send, ErrorType.PAYLOAD_TOO_LARGE, self._too_large(None)
                        )
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 413 is already out; drop the app's reaction to the disconnect
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
