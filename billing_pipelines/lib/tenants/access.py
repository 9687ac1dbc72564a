"""Tenant access as a function of the current Stripe subscription and the dunning ladder.

The SaaS API reads `api_access_enabled` and `rate_limit_multiplier` on every request. They are
never set by an event's arrival; they are recomputed from (Stripe's current subscription status,
the highest dunning rung executed on the tenant's open invoices), so replaying, duplicating or
reordering events cannot leave a paying tenant suspended. Every change is audited.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.dunning.ladder import DEFAULT_LADDER, DunningLadder

if TYPE_CHECKING:
    import psycopg

# Stripe subscription status -> billing_status (before our own dunning decisions).
_STATUS = {
    None: "pending",
    "trialing": "trialing",
    "active": "active",
    "past_due": "past_due",
    "unpaid": "unpaid",
    "canceled": "canceled",
    "incomplete_expired": "canceled",
    "paused": "paused",
    "incomplete": "incomplete",
}
# No service without a live subscription: ended, paused, or never paid for.
_NO_ACCESS = {"canceled", "incomplete_expired", "paused", "incomplete"}


@dataclass(frozen=True)
class TenantState:
    """The audited, API-facing part of a tenant row."""

    billing_status: str
    api_access_enabled: bool
    rate_limit_multiplier: Decimal
    subscription_status: str | None
    payment_failures: int
    plan: str
    stripe_subscription_id: str | None
    trial_end: datetime | None

    @property
    def restricted(self) -> bool:
        """True when the API refuses or throttles this tenant."""
        return not self.api_access_enabled or self.rate_limit_multiplier < 1

    def as_json(self) -> dict[str, Any]:
        """The state for the audit log's before/after columns."""
        out = asdict(self)
        out["rate_limit_multiplier"] = str(self.rate_limit_multiplier)
        out["trial_end"] = self.trial_end.isoformat() if self.trial_end else None
        return out


def decide(
    current: TenantState,
    *,
    subscription_status: str | None,
    dunning_level: int,
    payment_failures: int,
    ladder: DunningLadder = DEFAULT_LADDER,
) -> TenantState:
    """The state the tenant must be in, given Stripe's subscription status and the ladder."""
    billing_status = _STATUS.get(subscription_status, "pending")
    if subscription_status in _NO_ACCESS:
        access, multiplier = False, Decimal("1.00")
    else:
        # Stripe's "unpaid" means every retry failed: the ladder's last rung, even if we
        # never saw the failure events (they are recovered later, the effect is not delayed).
        level = len(ladder.steps) if subscription_status == "unpaid" else dunning_level
        access, multiplier = ladder.effects(level)
        if not access:
            billing_status = "suspended"
    return replace(
        current,
        billing_status=billing_status,
        api_access_enabled=access,
        rate_limit_multiplier=multiplier.quantize(Decimal("0.01")),
        subscription_status=subscription_status,
        payment_failures=payment_failures,
    )


# ---- database ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """A tenant row locked for update, with its contact details and state."""

    tenant_id: str
    name: str
    email: str
    stripe_customer_id: str | None
    state: TenantState


_COLUMNS = (
    "tenant_id, name, email, plan, stripe_customer_id, stripe_subscription_id, billing_status, "
    "api_access_enabled, rate_limit_multiplier, trial_end, subscription_status, payment_failures"
)


def _tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(
        tenant_id=row["tenant_id"],
        name=row["name"],
        email=row["email"],
        stripe_customer_id=row["stripe_customer_id"],
        state=TenantState(
            billing_status=row["billing_status"],
            api_access_enabled=bool(row["api_access_enabled"]),
            rate_limit_multiplier=Decimal(row["rate_limit_multiplier"]),
            subscription_status=row["subscription_status"],
            payment_failures=int(row["payment_failures"]),
            plan=row["plan"],
            stripe_subscription_id=row["stripe_subscription_id"],
            trial_end=row["trial_end"],
        ),
    )


def lock_by_customer(conn: psycopg.Connection[Any], customer_id: str) -> Tenant | None:
    """The tenant billed through this Stripe customer, locked until the transaction ends."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM tenants WHERE stripe_customer_id = %s FOR UPDATE",  # noqa: S608
        (customer_id,),
    ).fetchone()
    return None if row is None else _tenant(row)


def lock_by_id(conn: psycopg.Connection[Any], tenant_id: str) -> Tenant | None:
    """The tenant by id, locked until the transaction ends."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM tenants WHERE tenant_id = %s FOR UPDATE",  # noqa: S608
        (tenant_id,),
    ).fetchone()
    return None if row is None else _tenant(row)


def dunning_position(conn: psycopg.Connection[Any], tenant_id: str) -> tuple[int, int]:
    """(highest rung executed, most failed attempts) over the tenant's open dunning cases."""
    row = conn.execute(
        """
        SELECT coalesce(max(a.step), 0) AS level, coalesce(max(c.attempt_count), 0) AS failures
        FROM dunning_cases c
        LEFT JOIN dunning_actions a ON a.invoice_id = c.invoice_id
        WHERE c.tenant_id = %s AND c.status = 'open'
        """,
        (tenant_id,),
    ).fetchone()
    assert row is not None
    return int(row["level"]), int(row["failures"])


def audit(
    conn: psycopg.Connection[Any],
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    reason: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    """Append who/what/why with the before and after states."""
    conn.execute(
        """
        INSERT INTO audit_log (actor, action, entity_type, entity_id, reason, before, after)
        VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)
        """,
        (
            actor,
            action,
            entity_type,
            entity_id,
            reason,
            None if before is None else json.dumps(before),
            None if after is None else json.dumps(after),
        ),
    )


def change_action(before: TenantState, after: TenantState) -> str:
    """A short verb for the audit log's `action` column."""
    if before.api_access_enabled and not after.api_access_enabled:
        return "tenant.suspend" if after.billing_status == "suspended" else "tenant.revoke_access"
    if before.restricted and not after.restricted:
        return "tenant.reactivate"
    if after.rate_limit_multiplier < before.rate_limit_multiplier:
        return "tenant.rate_limit"
    return "tenant.sync"


def apply(
    conn: psycopg.Connection[Any], tenant: Tenant, target: TenantState, *, actor: str, reason: str
) -> tuple[TenantState, TenantState] | None:
    """Write the target state if it differs, with an audit row; returns (before, after)."""
    before = tenant.state
    if target == before:
        return None
    conn.execute(
        """
        UPDATE tenants
        SET billing_status = %s, api_access_enabled = %s, rate_limit_multiplier = %s,
            subscription_status = %s, payment_failures = %s, plan = %s,
            stripe_subscription_id = %s, trial_end = %s, updated_at = now()
        WHERE tenant_id = %s
        """,
        (
            target.billing_status,
            target.api_access_enabled,
            target.rate_limit_multiplier,
            target.subscription_status,
            target.payment_failures,
            target.plan,
            target.stripe_subscription_id,
            target.trial_end,
            tenant.tenant_id,
        ),
    )
    audit(
        conn,
        actor=actor,
        action=change_action(before, target),
        entity_type="tenant",
        entity_id=tenant.tenant_id,
        reason=reason,
        before=before.as_json(),
        after=target.as_json(),
    )
    return before, target
