"""Which tenant ids billing accepts: one rule, checked wherever a new tenant id enters.

A tenant id travels into SQL (always as a bound parameter), Stripe metadata and search queries,
meter event identifiers (at most 100 characters) and idempotency keys, which are HTTP headers:
the stripe SDK cannot send non-Latin-1 text there and refuses control characters, and our keys
use `:` as a separator. So ids are short plain ASCII: letters, digits, `_`, `.` and `-`,
starting with a letter or digit, at most 64 characters. Anything else is refused up front,
before a row is written or a Stripe object is created.
"""

from __future__ import annotations

import re

from billing_pipelines.lib.errors import BillingConfigError

MAX_TENANT_ID_LENGTH = 64
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ALLOWED = "letters, digits, '_', '.' and '-' (starting with a letter or digit)"


class InvalidTenantIdError(BillingConfigError):
    """A tenant id outside the allowed characters or length; the message says which rule."""


def check_tenant_id(tenant_id: str) -> str:
    """The id itself when billing can use it everywhere, else a clear InvalidTenantIdError."""
    shown = repr(tenant_id if len(tenant_id) <= 80 else tenant_id[:80] + "...")
    if not tenant_id:
        raise InvalidTenantIdError("tenant id is empty")
    if len(tenant_id) > MAX_TENANT_ID_LENGTH:
        raise InvalidTenantIdError(
            f"tenant id {shown} is {len(tenant_id)} characters long "
            f"(at most {MAX_TENANT_ID_LENGTH})"
        )
    if not _TENANT_ID.fullmatch(tenant_id):
        bad = sorted({c for c in tenant_id if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        detail = f"characters not allowed: {' '.join(repr(c) for c in bad)}; " if bad else ""
        raise InvalidTenantIdError(f"tenant id {shown} is not allowed ({detail}use {ALLOWED})")
    return tenant_id
