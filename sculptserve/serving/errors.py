"""The core's client-error type, shared by every transport.

A :class:`PayloadError` is any mistake of the client's (bad shape, NaN, undecodable image,
unknown encoding, limits): REST answers it with 400, gRPC with INVALID_ARGUMENT. It is raised
by the core (:mod:`sculptserve.serving.core`) and the modules it uses for requests (inputs,
encodings, the runtime); it lives here, below all of them, so none depends on a transport for
it.
"""

from __future__ import annotations

__all__ = ["PayloadError"]


class PayloadError(ValueError):
    """A client sent something unusable; the message says which item and what was wrong."""
