"""A scheduled cancellation is on the Stripe side of the diff, however it was scheduled:
`cancel_at_period_end` or a `cancel_at` instant (which leaves `cancel_at_period_end` false)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import psycopg
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    subscription_state_diff,
)
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.webhook_harness import query

DIFF = [stripe_subscription_snapshot, stripe_invoice_snapshot, subscription_state_diff]
START = 1780000000 + 7 * 3600 + 13  # 2026-05-29T03:26:53Z, late in the month, mid-morning


def test_a_cancellation_scheduled_at_an_instant_is_in_the_diff_beside_one_at_period_end(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient, billing_db_url: str
) -> None:
    c = stripe_client
    support.catalog(c)
    _, at_instant, _ = support.tenant(c, billing_db_url, "t-cancel-at", frozen_time=START)
    _, at_end, _ = support.tenant(c, billing_db_url, "t-period-end", frozen_time=START + 5)
    _, plain, _ = support.tenant(c, billing_db_url, "t-plain", frozen_time=START + 9)
    instant = START + 11 * 86400 + 1234
    c.v1.subscriptions.update(at_instant, {"cancel_at": instant})
    ends = c.v1.subscriptions.update(at_end, {"cancel_at_period_end": True})
    period_end = int(ends["items"]["data"][0]["current_period_end"])
    # Every tenant row disagrees with Stripe on the status, so each has a finding to read.
    with psycopg.connect(billing_db_url) as conn:
        conn.execute("UPDATE tenants SET subscription_status = 'past_due'")

    assert dg.materialize(DIFF, resources=support.resources(stripe_sandbox.url, billing_db_url))
    rows = query(
        billing_db_url,
        "SELECT subscription_id, stripe_state FROM subscription_state_findings "
        "WHERE category = 'status_mismatch'",
    )
    state = {r["subscription_id"]: r["stripe_state"] for r in rows}
    assert state[at_instant]["cancel_at"] == datetime.fromtimestamp(instant, UTC).isoformat()
    assert state[at_instant]["cancel_at_period_end"] is False
    assert state[at_end]["cancel_at"] == datetime.fromtimestamp(period_end, UTC).isoformat()
    assert state[at_end]["cancel_at_period_end"] is True
    assert state[plain]["cancel_at"] is None
    stored = query(
        billing_db_url,
        "SELECT subscription_id, cancel_at FROM stripe_subscription_snapshots",
    )
    assert {r["subscription_id"]: r["cancel_at"] for r in stored} == {
        at_instant: datetime.fromtimestamp(instant, UTC),
        at_end: datetime.fromtimestamp(period_end, UTC),
        plain: None,
    }
