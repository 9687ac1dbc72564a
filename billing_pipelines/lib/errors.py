"""Errors an operator can act on: each names the setting or input at fault in one line."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class BillingConfigError(Exception):
    """A setting is missing or malformed; the message names the setting and never its secret."""


class ServiceUnavailableError(Exception):
    """A configured server (database, warehouse, Stripe) could not be reached."""


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs, errors and metadata."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


_KNOWN_CAUSES = (
    ("connection refused", "connection refused: nothing listens there"),
    ("name or service not known", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("timed out", "timed out"),
    ("timeout expired", "timed out"),
    ("password authentication failed", "password authentication failed"),
    ("does not exist", "database does not exist"),
    ("authentication", "authentication failed"),
)


def describe_connection_error(exc: BaseException) -> str:
    """A short, secret-free cause for a failed connection, for one-line operator errors."""
    text = str(exc).lower()
    for needle, cause in _KNOWN_CAUSES:
        if needle in text:
            return cause
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:160]
