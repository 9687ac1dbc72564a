"""Stripe webhook signatures: HMAC-SHA256 of "{t}.{body}", several secrets, a two-sided window.

The stripe SDK's verifier only rejects timestamps that are too old; a timestamp far in the
future is as suspicious (a replay prepared in advance, a skewed clock) so we reject both.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """Why a request was rejected; `reason` is a short metric label, never secret material."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ParsedHeader:
    """The timestamp and the v1 signatures of a `Stripe-Signature` header."""

    timestamp: int
    signatures: tuple[str, ...]


def parse_header(header: str | None) -> ParsedHeader:
    """Split `t=...,v1=...,v1=...`; other schemes (v0) are ignored like Stripe's SDKs do."""
    if not header:
        raise SignatureError("missing_signature", "no Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("malformed_signature", "timestamp is not a number") from None
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None:
        raise SignatureError("malformed_signature", "no timestamp in Stripe-Signature")
    if not signatures:
        raise SignatureError("malformed_signature", "no v1 signature in Stripe-Signature")
    return ParsedHeader(timestamp, tuple(signatures))


def expected_signature(payload: bytes, timestamp: int, secret: str) -> str:
    """The hex HMAC Stripe computes for this payload, timestamp and endpoint secret."""
    signed = str(timestamp).encode() + b"." + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check the signature against every secret and the timestamp both ways; returns t."""
    if not secrets:
        raise SignatureError("no_secret_configured", "no webhook secret is configured")
    parsed = parse_header(header)
    if parsed.timestamp < now - tolerance_seconds:
        raise SignatureError("timestamp_too_old", "timestamp outside the tolerance (past)")
    if parsed.timestamp > now + tolerance_seconds:
        raise SignatureError("timestamp_in_future", "timestamp outside the tolerance (future)")
    # Compare bytes: hmac.compare_digest raises TypeError on non-ASCII text, and a header is
    # attacker-controlled (a forged `v1=é` must be a plain bad_signature, never a 500).
    candidates = [candidate.encode("utf-8", "surrogateescape") for candidate in parsed.signatures]
    for secret in secrets:
        expected = expected_signature(payload, parsed.timestamp, secret).encode("ascii")
        # Compare against every candidate without short-circuiting on the first byte.
        if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
            return parsed.timestamp
    raise SignatureError("bad_signature", "no signature matches any configured secret")
