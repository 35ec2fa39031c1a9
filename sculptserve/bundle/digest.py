"""The bundle digest that pins a bundle, and the optional ed25519 signature over it.

**Digest.** ``sha256:<64 hex>`` of the canonical manifest: the parsed manifest.json dumped by
Python's json module with sorted keys, no whitespace and non-ASCII characters as ``\\uXXXX``
escapes (so the bytes are ASCII, hence UTF-8). The manifest lists the sha256 of every other
file of the bundle, so the digest stands for the whole bundle: any edit of the manifest (a
drift threshold) or of a file (an ONNX graph, reference.npy) changes it, even when the edit
updates the listed sha256 too. Re-indenting manifest.json does not.

**Signature.** ``signature.json`` beside manifest.json (:class:`~.schema.SignatureFile`): an
ed25519 signature over the bytes ``SIGNED_PREFIX + digest`` (the prefix keeps a bundle key's
signatures from meaning anything in another protocol). It is not listed in the manifest and not
part of the digest: it covers the digest, not itself.

**Keys** are unencrypted PEM files: the private key PKCS#8 (``sculpt keygen --out key.pem``, or
``openssl genpkey -algorithm ed25519 -out key.pem``), the public key SubjectPublicKeyInfo
(``key.pub.pem`` from ``sculpt keygen``, or ``openssl pkey -in key.pem -pubout``). A key's id
is ``ed25519:`` and the first 16 hex digits of the sha256 of its raw 32 bytes.

Pure functions over dicts, bytes and keys (plus reading and writing key files); the checks that
use them are in :func:`sculptserve.bundle.load.load_bundle`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sculptserve.bundle.schema import SignatureFile

__all__ = [
    "DIGEST_PREFIX",
    "SIGNED_PREFIX",
    "TrustError",
    "canonical_manifest",
    "check_signed_digest",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "manifest_digest",
    "parse_digest",
    "sign_digest",
    "verify_signature",
    "write_keypair",
]

DIGEST_PREFIX = "sha256:"
SIGNED_PREFIX = b"sculptserve bundle digest v1\n"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class TrustError(ValueError):
    """A digest, key or signature is malformed or does not verify; the message says which."""


def canonical_manifest(data: Mapping[str, Any]) -> bytes:
    """The manifest as canonical bytes: sorted keys, no whitespace, ASCII.

    ASCII escapes rather than raw UTF-8: a manifest may hold a lone surrogate (``"\\ud800"``
    parses), which has no UTF-8 encoding. Numbers are written as Python writes them (floats as
    their shortest round-trip repr, NaN as ``NaN``), the same way every time.
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def manifest_digest(data: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of :func:`canonical_manifest`: the bundle's digest."""
    return DIGEST_PREFIX + hashlib.sha256(canonical_manifest(data)).hexdigest()


def parse_digest(text: str) -> str:
    """A digest as given by a user (hex in either case, surrounding blanks) in its normal form;
    ValueError unless it is ``sha256:`` and 64 hex digits."""
    normal = text.strip().lower()
    if not _DIGEST_RE.fullmatch(normal):
        raise ValueError(
            f"{text!r} is not a bundle digest: expected sha256: and 64 hex digits, as "
            "`sculpt export` and `sculpt inspect` print it"
        )
    return normal


# --- keys ------------------------------------------------------------------------------------


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``ed25519:<16 hex>``: a short fingerprint of the (public) key, for messages and labels."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM ed25519 private key (the signing key of `sculpt export`)."""
    pem = _read_pem(path, "signing key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: an encrypted key (a password would be needed)
        reason = " ".join(str(exc).split())[:200]
        raise TrustError(
            f"{path}: not an unencrypted PEM private key ({reason}); make one with "
            "`sculpt keygen --out KEY.pem`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError(f"{path}: a {type(key).__name__}, but bundles are signed with ed25519")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """A PEM (SubjectPublicKeyInfo) ed25519 public key (the verify key of serving)."""
    pem = _read_pem(path, "verify key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise TrustError(
            f"{path}: not a PEM public key ({reason}); pass the .pub.pem that `sculpt keygen` "
            "wrote (never the private key)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"{path}: a {type(key).__name__}, but bundles are signed with ed25519")
    return key


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_keypair(key: Ed25519PrivateKey, private_path: Path, public_path: Path) -> None:
    """Write the private key (PKCS#8 PEM, mode 0600) and its public key (PEM); never overwrite
    an existing file."""
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in (private_path, public_path):
        if path.exists():
            raise TrustError(f"{path} already exists; choose another --out (keys are not replaced)")
    for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
        # O_EXCL: a file appearing since the check above is not overwritten either
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


# --- signatures ------------------------------------------------------------------------------


def sign_digest(key: Ed25519PrivateKey, digest: str) -> SignatureFile:
    """The signature.json content signing ``digest`` with ``key``."""
    digest = parse_digest(digest)
    signature = key.sign(SIGNED_PREFIX + digest.encode("ascii"))
    return SignatureFile(
        algorithm="ed25519",
        digest=digest,
        key_id=key_id(key),
        signature=base64.b64encode(signature).decode("ascii"),
    )


def check_signed_digest(signature: SignatureFile, digest: str) -> None:
    """TrustError unless ``signature`` is about ``digest`` (checkable without a key)."""
    if signature.digest != digest:
        raise TrustError(
            f"signature.json signs {signature.digest} but the bundle's digest is {digest}: "
            "the bundle changed after it was signed"
        )


def verify_signature(signature: SignatureFile, digest: str, key: Ed25519PublicKey) -> None:
    """Check that ``signature`` signs ``digest`` with ``key``; TrustError saying why not."""
    check_signed_digest(signature, digest)
    try:
        raw = base64.b64decode(signature.signature, validate=True)
        key.verify(raw, SIGNED_PREFIX + digest.encode("ascii"))
    except (InvalidSignature, binascii.Error):
        raise TrustError(
            f"signature.json does not verify with the verify key {key_id(key)} (the signature "
            f"names {signature.key_id}): the bundle was signed with another key, or the "
            "signature was altered"
        ) from None
