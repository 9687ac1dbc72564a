"""How Stripe's objects encode what billing reads: timestamps, references, ended statuses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Subscription statuses after which a tenant needs a new subscription to be billed again.
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})


def timestamp(value: Any) -> datetime | None:
    """A Stripe unix timestamp as an aware UTC datetime; None (or 0) when Stripe gives none."""
    return datetime.fromtimestamp(int(value), UTC) if value else None


def object_id(value: Any) -> str | None:
    """The id behind an expandable reference: an id string, an expanded dict or an SDK object."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("id"))
    return str(value.id)
