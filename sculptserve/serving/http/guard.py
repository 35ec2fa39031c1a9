"""Pure ASGI middleware for the REST service: optional API key and a request body limit.

BentoML 1.4 has neither built in, so both live here, in front of every route
(``SculptService.add_asgi_middleware(HttpGuard)``):

- **API key** (``SCULPT_API_KEY``): when set, every route except the health, metrics and docs
  routes needs ``Authorization: Bearer <key>``; otherwise 401 with a JSON reason. The
  comparison is constant-time (``hmac.compare_digest``) so response timing leaks nothing.
- **Body limit** (``SCULPT_REQUEST_MAX_BYTES``, default 8 MiB, see ``ServiceLimits``): a
  ``Content-Length`` over the limit is answered 413 before any byte of the body is read; a body
  without one (chunked) is counted while it streams and answered 413 once it passes the limit.

- **Malformed multipart**: ``multipart/form-data`` without a ``boundary`` is answered 400 here;
  BentoML 1.4's parser raises ``KeyError`` on it, which would be a 500 (found by fuzzing).

Error bodies are ``{"error": "..."}``. The middleware takes its key and limit as arguments;
without them (BentoML constructs it when the ASGI app is built) it loads them once, at
construction, through :func:`sculptserve.serving.settings.load_settings`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sculptserve.serving.settings import load_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes, scrapes and docs must work without the key (orchestrators and Prometheus have none).
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/docs"})


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list | None = None
) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


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
            await _send_json(
                send,
                401,
                {"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if self._multipart_without_boundary(scope):
            # BentoML 1.4 would fail with KeyError(b"boundary") -> 500 on such a request.
            await _send_json(
                send,
                400,
                {"error": "multipart/form-data needs a boundary parameter in Content-Type"},
            )
            return
        length = self._content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await _send_json(send, 413, self._too_large_body(length))
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
    def _multipart_without_boundary(scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"content-type":
                media, _, params = value.decode("latin-1").partition(";")
                if media.strip().lower() != "multipart/form-data":
                    return False
                for param in params.split(";"):
                    key, _, val = param.partition("=")
                    if key.strip().lower() == "boundary" and val.strip().strip('"'):
                        return False
                return True
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

    def _too_large_body(self, length: int | None) -> dict[str, str]:
        got = f" ({length} bytes)" if length is not None else ""
        return {
            "error": f"request body too large{got}: the limit is {self.max_body_bytes} bytes; "
            "split the batch or use the compact base64 input forms"
        }

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
                        await _send_json(send, 413, self._too_large_body(None))
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
