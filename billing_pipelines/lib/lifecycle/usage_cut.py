"""The usage side of a lifecycle instant: report usage up to it before, record it after.

A plan change or an immediate cancellation fixes the old part of the period when Stripe makes
it. `before` pushes the tenant's usage of the current part up to now (so the old part counts
it; see metering.cut_push), `after` records the instant Stripe applied it (so the nightly push
reports only the part after it; see metering.cuts).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.metering import cuts
from billing_pipelines.lib.metering.cut_push import CutPush, CutPushError, CutPushResult
from billing_pipelines.lib.stripe import lifecycle as stripe_lifecycle
from billing_pipelines.lib.stripe import periods as stripe_periods

if TYPE_CHECKING:
    import psycopg

    from billing_pipelines.lib.stripe.client import StripeClient


class UsageCutError(Exception):
    """The usage up to the instant could not be reported: the action did not go ahead."""


def _now(client: StripeClient, customer_id: str) -> datetime:
    return datetime.fromtimestamp(stripe_lifecycle.customer_now(client, customer_id), UTC)


def before(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    reporter: CutPush | None,
    *,
    tenant_id: str,
    customer_id: str,
    subscription_id: str,
) -> CutPushResult | None:
    """Push the tenant's usage of the current part of its period up to now (None: no
    reporter, nothing pushed); refuses the action when Stripe did not take it."""
    if reporter is None:
        return None
    instant = _now(client, customer_id)
    period_start = stripe_periods.current_period_start(client, subscription_id)
    earlier = cuts.last_cut(conn, tenant_id, period_start)
    try:
        return reporter.push(
            tenant_id, customer_id, subscription_id, instant, period_start, earlier
        )
    except CutPushError as exc:
        raise UsageCutError(f"{exc}; nothing was changed, try again") from exc


def after(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    *,
    tenant_id: str,
    customer_id: str,
    subscription_id: str,
    action: str,
) -> datetime:
    """Record the instant the action took effect (the customer's clock read after Stripe
    answered: the part from it on is the new price's, or nobody's after a cancellation)."""
    instant = _now(client, customer_id)
    cuts.record_cut(conn, cuts.UsageCut(tenant_id, instant, action, subscription_id))
    return instant
