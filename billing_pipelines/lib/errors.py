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
