"""A subscription signed up at 14:30 UTC, pushed day by day as the schedules push it: every
invoice line bills exactly the distinct queries whose timestamps fall in its own period, on
the sign-up day and on the renewal day (split at 14:30), and the usage audit agrees. Ids logged
the day before the renewal (before 14:30's time of day) and again after it are copies: the
renewal day's part from 14:30 does not bill them again; ids re-logged just after a midnight are
billed on their first day, and the audit's day counts say so too.

The account's finalization grace period is 48 hours here (the boundary policy's requirement):
the renewal day's part before 14:30 is pushed the next night while its invoice is a draft, and
its part from 14:30 once that invoice is final."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.metering.checks import meter_totals_match_warehouse
from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    usage_invoice_audit,
)
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.support import advance
from billing_pipelines_tests.webhook_harness import query

GRACE = 48 * 3600
# 33 days ago at 14:30:00 UTC: the renewal a month later is still in the past.
SIGN_UP = datetime.combine(
    datetime.now(UTC).date() - timedelta(days=33), datetime.min.time(), UTC
) + timedelta(hours=14, minutes=30)


@pytest.fixture
def long_grace(stripe_sandbox: SandboxHandle) -> Iterator[None]:
    """The account's invoice finalization grace period set to 48 hours for this test."""
    settings = stripe_sandbox.state.settings
    before = settings.finalization_grace_seconds
    settings.finalization_grace_seconds = GRACE
    try:
        yield
    finally:
        settings.finalization_grace_seconds = before


def insert(
    tenant_id: str, prefix: str, count: int, first: datetime, last: datetime, kind: str = "query"
) -> None:
    """`count` distinct ids logged as `kind` events spread evenly over [first, last)."""
    span = int((last - first).total_seconds())
    wh.connect(os.environ["CLICKHOUSE_URL"]).command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
            tokens_used, embeddings_count, latency_ms)
        SELECT generateUUIDv4(), concat({prefix:String}, toString(number)), {tenant:String},
               {first:DateTime64(3, 'UTC')} + toIntervalSecond(intDiv(number * {span:UInt64},
                                                                      {count:UInt64})),
               {kind:String}, 10, 1, 30
        FROM numbers({count:UInt64})
        """,
        parameters={
            "tenant": tenant_id,
            "prefix": prefix,
            "first": first,
            "span": span,
            "count": count,
            "kind": kind,
        },
    )


def test_sign_up_and_renewal_days_split_at_14_30_bill_each_period_exactly(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    embedded_services: dict[str, str],
    long_grace: None,
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    _, sub, clock = support.tenant(
        c, billing_db_url, "t-1430", plan="starter", frozen_time=int(SIGN_UP.timestamp())
    )
    renewal_ts = c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end
    renewal = datetime.fromtimestamp(renewal_ts, UTC)
    assert (renewal.hour, renewal.minute) == (14, 30)

    def midnight(day: date) -> datetime:
        return wh.day_bounds(day)[0]

    d0, d1, db = SIGN_UP.date(), SIGN_UP.date() + timedelta(days=1), renewal.date()
    insert("t-1430", "before-sign-up-", 200, midnight(d0), SIGN_UP)  # billed by no period
    insert("t-1430", "sign-up-day-", 4_000, SIGN_UP, midnight(d1))
    insert("t-1430", "day-two-", 5_000, midnight(d1), midnight(d1 + timedelta(days=1)))
    insert("t-1430", "renewal-before-", 3_000, midnight(db), renewal)
    insert("t-1430", "renewal-after-", 4_000, renewal, midnight(db + timedelta(days=1)))
    # 200 queries logged again just after midnight (a cache re-log): billed on the sign-up day.
    late_evening = midnight(d1) - timedelta(hours=1)
    insert("t-1430", "re-logged-", 200, late_evening, midnight(d1))
    insert("t-1430", "re-logged-", 200, midnight(d1), midnight(d1) + timedelta(hours=1))
    # Ids logged the day before the renewal, before 14:30, and again after the renewal: 500
    # queries (billed on the day before, in the first period, not again in the second) and 300
    # ingests whose ids come back as queries (copies: billed in neither period).
    eve = db - timedelta(days=1)
    insert("t-1430", "copied-", 500, midnight(eve), midnight(eve) + timedelta(hours=10))
    insert("t-1430", "copied-", 500, renewal + timedelta(hours=5), midnight(db + timedelta(days=1)))
    insert(
        "t-1430", "ingest-", 300, midnight(eve), midnight(eve) + timedelta(hours=10), "embedding"
    )
    insert("t-1430", "ingest-", 300, renewal + timedelta(hours=5), midnight(db + timedelta(days=1)))
    insert(
        "t-1430",
        "after-renewal-",
        7_000,
        midnight(db + timedelta(days=1)),
        midnight(db) + timedelta(days=2),
    )

    def push(day: date) -> None:
        # As the schedules do: after the day ends, on the clock's time; with the check the
        # daily job runs, which must compare Stripe's day total with the part reported now
        # (not the whole day) on a split day.
        result = dg.materialize(
            [daily_tenant_usage, stripe_meter_reports, meter_totals_match_warehouse],
            partition_key=day.isoformat(),
            resources=resources,
            run_config={
                "ops": {
                    "stripe_meter_reports_meter_totals_match_warehouse": {
                        "config": {"settle_seconds": 2.0, "poll_seconds": 0.5}
                    }
                }
            },
            raise_on_error=False,
        )
        assert result.success
        [check] = [
            e.asset_check_evaluation_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
            and e.asset_check_evaluation_data.check_name == "meter_totals_match_warehouse"
        ]
        assert check.passed, check.description

    for day in (d0, d1, eve):
        advance(c, clock, int((midnight(day) + timedelta(days=1, minutes=10)).timestamp()))
        push(day)
    # The night after the renewal: its invoice is a draft, so the renewal day's event carries
    # the part before 14:30.
    advance(c, clock, int((midnight(db) + timedelta(days=1, minutes=10)).timestamp()))
    push(db)
    # Past the grace period: the first period's invoice is final; the late-event re-push of
    # the renewal day now carries the part from 14:30, and the next day is pushed.
    advance(c, clock, renewal_ts + GRACE + 3600)
    push(db)
    push(db + timedelta(days=1))
    # Close the second period too.
    next_end = c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end
    advance(c, clock, next_end + GRACE + 3600)

    metered = sorted(
        (
            (line.period.start, line.quantity, line.amount)
            for inv in c.v1.invoices.list({"subscription": sub, "limit": 10}).data
            if inv.status not in ("draft",)
            for line in inv.lines.data
            if line.quantity is not None
            and line.period.start != line.period.end
            and line.pricing is not None
            and line.amount != 2900
        ),
    )
    # Period 1 [14:30 sign-up, 14:30 renewal): 4,000 + 200 (re-logged after midnight, billed
    # once) + 5,000 + 500 (the day before the renewal) + 3,000 = 12,700 queries, 2,700 over
    # starter's 10,000 at $0.001 = $2.70.
    # Period 2 from 14:30: 4,000 + 7,000 = 11,000 (the copies of the day before's ids are not
    # billed again), 1,000 over = $1.00.
    assert metered == [
        (int(SIGN_UP.timestamp()), 12_700, 270),
        (renewal_ts, 11_000, 100),
    ]

    audit = dg.materialize(
        [stripe_subscription_snapshot, stripe_invoice_snapshot, usage_invoice_audit],
        resources=resources,
    )
    assert audit.success
    rows: list[dict[str, Any]] = query(
        billing_db_url,
        "SELECT period_start, warehouse_queries, invoice_quantity, difference_cents, causes "
        "FROM usage_invoice_audit WHERE tenant_id = 't-1430' ORDER BY period_start",
    )
    assert [
        (r["warehouse_queries"], r["invoice_quantity"], r["difference_cents"]) for r in rows
    ] == [
        (12_700, 12_700, 0),
        (11_000, 11_000, 0),
    ]
    # The split renewal day is no finding, nor the day whose re-logged copies are not billed.
    assert [r["causes"] for r in rows] == [[], []]
