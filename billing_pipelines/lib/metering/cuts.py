"""Lifecycle instants that cut a tenant's period: where a plan change or cancellation split it.

A plan change or an immediate cancellation at 17:30 fixes the quantity of the old part of the
period at that instant (the replaced price's usage line, the cancelled subscription's final
invoice). Before the action, the tenant's usage up to the instant is pushed (`cut_push`); the
action then records its instant here, and the nightly push treats it like a period boundary
whose invoice is already final: the day's event carries only the part from the instant on
(counted for the new price), or nothing once the subscription has ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime

from billing_pipelines.lib.metering.boundaries import SubscriptionTimes
from billing_pipelines.lib.metering.ledger import Conn
from billing_pipelines.lib.usage.warehouse import day_bounds

PLAN_CHANGE = "plan_change"
CANCEL_NOW = "cancel_now"


@dataclass(frozen=True)
class UsageCut:
    """One lifecycle instant: the old part of the tenant's period ends here, billed for good."""

    tenant_id: str
    instant: datetime
    action: str  # PLAN_CHANGE | CANCEL_NOW
    subscription_id: str


def record_cut(conn: Conn, cut: UsageCut) -> None:
    """Remember the instant (idempotent), in the same transaction as the action's own writes."""
    conn.execute(
        """
        INSERT INTO lifecycle_usage_cuts (tenant_id, instant, action, subscription_id)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (tenant_id, instant, action) DO NOTHING
        """,
        (cut.tenant_id, cut.instant, cut.action, cut.subscription_id),
    )


def cuts_on(conn: Conn, day: date) -> dict[str, list[UsageCut]]:
    """The cuts inside a UTC day, per tenant, oldest first."""
    start, end = day_bounds(day)
    rows = conn.execute(
        """
        SELECT tenant_id, instant, action, subscription_id FROM lifecycle_usage_cuts
        WHERE instant >= %s AND instant < %s ORDER BY tenant_id, instant
        """,
        (start, end),
    ).fetchall()
    out: dict[str, list[UsageCut]] = {}
    for r in rows:
        out.setdefault(r["tenant_id"], []).append(
            UsageCut(r["tenant_id"], r["instant"], r["action"], r["subscription_id"])
        )
    return out


def with_cuts(
    times: Mapping[str, SubscriptionTimes], cuts: Mapping[str, Iterable[UsageCut]]
) -> dict[str, SubscriptionTimes]:
    """Subscription times (per tenant) with each cut added as a boundary; an immediate
    cancellation also ends the subscription at its instant (nothing after it is billable)."""
    out = dict(times)
    for tenant_id, tenant_cuts in cuts.items():
        current = out.get(tenant_id, SubscriptionTimes(start=None, end=None))
        for cut in tenant_cuts:
            end = current.end
            if cut.action == CANCEL_NOW:
                end = cut.instant if end is None else min(end, cut.instant)
            current = replace(
                current,
                end=end,
                boundaries=tuple(sorted({*current.boundaries, cut.instant})),
            )
        out[tenant_id] = current
    return out


def final_at(cuts: Mapping[str, Iterable[UsageCut]]) -> dict[str, set[datetime]]:
    """Per tenant, the instants whose old part is billed for good (its quantity fixed at the
    cut), so the day's event may move on to the part after them."""
    return {tenant: {c.instant for c in tenant_cuts} for tenant, tenant_cuts in cuts.items()}


def last_cut(conn: Conn, tenant_id: str, after: datetime | None) -> datetime | None:
    """The tenant's latest cut after an instant (its current period's start): the current
    part of the period starts there."""
    row = conn.execute(
        """
        SELECT max(instant) AS instant FROM lifecycle_usage_cuts
        WHERE tenant_id = %s AND (%s::timestamptz IS NULL OR instant > %s)
        """,
        (tenant_id, after, after),
    ).fetchone()
    return row["instant"] if row else None
