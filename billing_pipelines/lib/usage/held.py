"""Usage of tenants the billing database does not know yet: held, alerted once, pushed later.

Held rows are stored in daily_tenant_usage like any other (the push leaves tenants without a
Stripe customer and subscription unbilled); once such a tenant is billable, the days it has
usage for and no report yet are pushed again, as long as Stripe still accepts them (35 days).
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.alerts.channels import Failure

if TYPE_CHECKING:
    import psycopg

# Stripe accepts meter events up to 35 days old; a day is re-pushed only well inside that.
RELEASE_WINDOW_DAYS = 34


def held_summary(tenant_ids: list[str], limit: int = 10, width: int = 60) -> str:
    """The held tenant ids for one line: repr'd (odd ids stay readable), capped."""
    shown = [repr(t if len(t) <= width else t[:width] + "...") for t in tenant_ids[:limit]]
    more = len(tenant_ids) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def held_usage_alert(day: date, tenant_ids: list[str], queries: int) -> Failure:
    """One alert per day and set of held tenants (a re-run of the day raises nothing new)."""
    digest = hashlib.sha256("\n".join(sorted(tenant_ids)).encode()).hexdigest()[:16]
    return Failure(
        dedup_key=f"usage_held:{day}:{digest}",
        kind="usage_held",
        summary=f"usage of {len(tenant_ids)} unknown tenant(s) held on {day}",
        reason=(
            f"{queries:,} billable queries from tenants the billing database does not know: "
            f"{held_summary(tenant_ids)}; create the tenants (with a Stripe customer and "
            f"subscription) within {RELEASE_WINDOW_DAYS} days and they are billed"
        ),
        link=None,
        details={"day": day.isoformat(), "tenants": tenant_ids[:100], "queries": queries},
    )


def days_to_release(conn: psycopg.Connection[Any], today: date) -> dict[date, list[str]]:
    """Days inside Stripe's window holding usage of tenants that are billable now and that
    no meter report covers yet (held usage whose tenant now exists), with those tenants."""
    rows = conn.execute(
        """
        SELECT u.usage_date, u.tenant_id
        FROM daily_tenant_usage u
        JOIN tenants t ON t.tenant_id = u.tenant_id
        WHERE u.usage_date >= %s AND u.usage_date < %s
          AND u.billable_queries > 0
          AND t.stripe_customer_id IS NOT NULL AND t.stripe_subscription_id IS NOT NULL
          AND NOT EXISTS (
              SELECT 1 FROM usage_report_ledger l
              WHERE l.usage_date = u.usage_date AND l.tenant_id = u.tenant_id
          )
        ORDER BY u.usage_date, u.tenant_id
        """,
        (today - timedelta(days=RELEASE_WINDOW_DAYS), today),
    ).fetchall()
    out: dict[date, list[str]] = {}
    for row in rows:
        out.setdefault(row["usage_date"], []).append(row["tenant_id"])
    return out
