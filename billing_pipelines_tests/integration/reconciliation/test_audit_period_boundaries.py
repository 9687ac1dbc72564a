"""The usage audit over periods that do not start at 00:00 UTC: truth is counted by event
timestamps over each invoice line's own period, so a boundary day billed in the wrong period
(or not at all) is an under-charge the audit names, never a silent "zero difference". The loss
is made as the pipeline made it before the boundary policy (a whole-day total at midnight); the
pipeline itself is tested across such boundaries in test_period_boundary_push.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    usage_invoice_audit,
)
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    MeterReport,
    event_timestamp,
    identifier_for,
)
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.support import advance
from billing_pipelines_tests.webhook_harness import query

# A sign-up at 14:30:00 UTC three days ago (inside Stripe's 35-day window for meter events).
DAY = datetime.now(UTC).date() - timedelta(days=3)
SIGN_UP = wh.day_bounds(DAY)[0] + timedelta(hours=14, minutes=30)


def insert(tenant_id: str, prefix: str, count: int, first: datetime, spread_seconds: int) -> None:
    """`count` query events with ids `<prefix>0..`, spread over [first, first + spread)."""
    wh.connect(os.environ["CLICKHOUSE_URL"]).command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
            tokens_used, embeddings_count, latency_ms)
        SELECT generateUUIDv4(), concat({prefix:String}, toString(number)), {tenant:String},
               {first:DateTime64(3, 'UTC')} + toIntervalSecond(number % {spread:UInt64}),
               'query', 10, 1, 30
        FROM numbers({count:UInt64})
        """,
        parameters={
            "tenant": tenant_id,
            "prefix": prefix,
            "first": first,
            "spread": spread_seconds,
            "count": count,
        },
    )


def whole_day_push(
    client: stripe.StripeClient, db_url: str, tenant_id: str, customer: str, value: int
) -> None:
    """DAY's whole total as one meter event at 00:00:01 UTC (version 1), recorded delivered."""
    report = MeterReport(
        tenant_id=tenant_id,
        metric="queries",
        usage_date=DAY,
        value=value,
        value_version=1,
        identifier=identifier_for(tenant_id, "queries", DAY, 1),
        stripe_customer_id=customer,
        event_name="rag_api_queries",
        timestamp=event_timestamp(DAY, 1),
    )
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        (pending,) = ledger.record_pending(conn, [report], "before-the-boundary-policy")
        assert stripe_meters.send_meter_event(client, pending).status == DELIVERED
        assert pending.ledger_id is not None
        ledger.record_outcome(conn, pending.ledger_id, DELIVERED)


def test_a_period_starting_at_14_30_is_audited_by_timestamps_and_its_boundary_day_named(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    embedded_services: dict[str, str],
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    customer, sub, clock = support.tenant(
        c, billing_db_url, "t-afternoon", frozen_time=int(SIGN_UP.timestamp())
    )
    midnight = wh.day_bounds(DAY)[0]
    # Before the sign-up: 300 queries (no period holds them), 40 of which are logged again after
    # the sign-up (the first event decides: still before). After it: 120,000 queries.
    insert("t-afternoon", "early-", 300, midnight + timedelta(hours=2), 10 * 3600)
    insert("t-afternoon", "early-", 40, SIGN_UP + timedelta(minutes=5), 600)
    insert("t-afternoon", "late-", 120_000, SIGN_UP, 9 * 3600)
    advance(c, clock, int(SIGN_UP.timestamp()) + 86400)  # DAY is over

    stored = dg.materialize(
        [daily_tenant_usage], partition_key=DAY.isoformat(), resources=resources
    )
    assert stored.success
    # The loss as the pipeline made it before the boundary policy: the whole day's total,
    # stamped just after the day's midnight, through the same ledger and meter event code.
    whole_day_push(c, billing_db_url, "t-afternoon", customer, 300 + 120_000)

    period_end = c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end
    advance(c, clock, period_end + 2 * 3600)  # the period closed and its invoice finalized
    result = dg.materialize(
        [stripe_subscription_snapshot, stripe_invoice_snapshot, usage_invoice_audit],
        resources=resources,
    )
    assert result.success
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "usage_matches_invoices"
    ]
    assert not check.passed  # the old whole-day audit reported zero difference here

    (row,) = query(
        billing_db_url,
        "SELECT * FROM usage_invoice_audit WHERE tenant_id = 't-afternoon' "
        "AND invoice_quantity IS NOT NULL ORDER BY period_start DESC LIMIT 1",
    )
    audited: dict[str, Any] = row
    # The day's whole total was stamped at the day's first second, before the 14:30 sign-up,
    # so Stripe billed none of it; truth is the 120,000 queries first seen after 14:30.
    assert audited["period_start"] == SIGN_UP
    assert audited["invoice_quantity"] == 0
    assert audited["warehouse_queries"] == 120_000
    over = 120_000 - 100_000  # pro includes 100,000; $0.0008 each above
    assert audited["recomputed_amount"] == over * 8 // 100 == 1600
    assert audited["difference_cents"] == -1600
    causes = " | ".join(audited["causes"])
    assert f"boundary day {DAY}: the period starts at {SIGN_UP:%Y-%m-%d} 14:30:00 UTC" in causes
    assert "120,000 queries of that day after the start belong to this period" in causes
    assert "300 before it to the previous one" in causes
    assert "under-charged by $16.00" in causes
