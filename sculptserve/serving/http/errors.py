"""The REST error body, one shape for every 4xx and 5xx: ``{"error": "...", "error_type": "..."}``.

``error`` is the Open Inference Protocol's key (a one-line message saying what was wrong);
``error_type`` is a stable machine-readable code from :class:`ErrorType`, each with one HTTP
status (:data:`STATUS`). The guard (401, 413), the REST handlers (400, 404, 405, 413, 415, 500, 503)
and the OpenAPI document (:mod:`sculptserve.serving.http.contract`) all take them from here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from enum import StrEnum
from typing import Any

__all__ = ["STATUS", "ApiError", "ErrorType", "error_body", "send_error"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class ErrorType(StrEnum):
    """What went wrong, as a code clients can branch on."""

    INVALID_JSON = "invalid_json"  # the body is not JSON
    INVALID_FORM = "invalid_form"  # the body is not a readable multipart form
    VALIDATION = "validation_error"  # well-formed, but not what the schema allows
    # schema-valid, but unusable: an image that is not W x H or does not decode, NaN in raw
    # bytes, finite values that overflow float32 in the normalization or the model
    INVALID_INPUT = "invalid_input"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"  # an Open Inference Protocol path, model or version that is not here
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INTERNAL = "internal_error"
    UNAVAILABLE = "unavailable"


STATUS: dict[ErrorType, int] = {
    ErrorType.INVALID_JSON: 400,
    ErrorType.INVALID_FORM: 400,
    ErrorType.VALIDATION: 400,
    ErrorType.INVALID_INPUT: 400,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.PAYLOAD_TOO_LARGE: 413,
    ErrorType.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorType.INTERNAL: 500,
    ErrorType.UNAVAILABLE: 503,
}


class ApiError(Exception):
    """A request the REST layer answers with an error body (never a traceback in the log)."""

    def __init__(
        self, error_type: ErrorType, message: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers)

    @property
    def status(self) -> int:
        return STATUS[self.error_type]

    def body(self) -> dict[str, str]:
        return error_body(self.error_type, self.message)


def error_body(error_type: ErrorType, message: str) -> dict[str, str]:
    return {"error": message, "error_type": error_type.value}


async def send_error(
    send: Send, error_type: ErrorType, message: str, headers: Sequence[tuple[str, str]] = ()
) -> None:
    """Answer with the error body from plain ASGI code (the guard runs below Starlette)."""
    payload = json.dumps(error_body(error_type, message)).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": STATUS[error_type],
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode("ascii")),
                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
