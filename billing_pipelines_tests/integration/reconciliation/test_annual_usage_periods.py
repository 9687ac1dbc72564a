"""An annual tenant (yearly base fee, monthly metered usage on one mixed interval subscription)
over two monthly usage periods, pushed day by day as the schedules push it: each monthly
usage line bills exactly the distinct queries whose timestamps fall in its own period (the
sign-up and renewal days split at 09:05 UTC), the yearly fee is billed once, and the usage
audit agrees. Expected quantities are counted by hand from the raw events inserted below."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
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

TENANT = "t-annual-0905"


def annual_tenant(
    client: stripe.StripeClient, db_url: str, tenant: str = TENANT, cycle: str = "annual"
) -> tuple[str, str]:
    """A Pro tenant on the billing cycle, on its own clock at SIGN_UP: (subscription, clock)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(SIGN_UP.timestamp())})
    customer = client.v1.customers.create(
        {
            "email": "annual@tenant.example",
            "test_clock": clock.id,
            "metadata": {"tenant_id": TENANT},
        }
    )
    pm = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
    client.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": pm.id}})
    base = "pro_base_yearly" if cycle == "annual" else "pro_base_monthly"
    keys = [base, "pro_queries_overage_monthly"]
    prices = {p.lookup_key: p.id for p in client.v1.prices.list({"lookup_keys": keys}).data}
    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": prices[k]} for k in keys],
            "billing_mode": {"type": "flexible"},
            "metadata": {"tenant_id": tenant, "plan": "pro", "billing_cycle": cycle},
        }
    )
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """
            INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id,
                stripe_subscription_id, billing_status, subscription_status, api_access_enabled)
            VALUES (%s, 'Annual', 'annual@tenant.example', 'pro', %s, %s, %s, %s, true)
            """,
            (tenant, customer.id, sub.id, sub.status, sub.status),
        )
    return str(sub.id), str(clock.id)


GRACE = 48 * 3600
# 34 days ago at 09:05:00 UTC: the first monthly renewal is still in the past.
SIGN_UP = datetime.combine(
    datetime.now(UTC).date() - timedelta(days=34), datetime.min.time(), UTC
) + timedelta(hours=9, minutes=5)


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


def insert(tenant_id: str, prefix: str, count: int, first: datetime, last: datetime) -> None:
    """`count` distinct queries spread evenly over [first, last)."""
    span = int((last - first).total_seconds())
    wh.connect(os.environ["CLICKHOUSE_URL"]).command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
            tokens_used, embeddings_count, latency_ms)
        SELECT generateUUIDv4(), concat({prefix:String}, toString(number)), {tenant:String},
               {first:DateTime64(3, 'UTC')} + toIntervalSecond(intDiv(number * {span:UInt64},
                                                                      {count:UInt64})),
               'query', 10, 1, 30
        FROM numbers({count:UInt64})
        """,
        parameters={
            "tenant": tenant_id,
            "prefix": prefix,
            "first": first,
            "span": span,
            "count": count,
        },
    )


def push_day(resources: dict[str, Any], day: date) -> None:
    """One day through the daily job's assets, as the schedules run it."""
    result = dg.materialize(
        [daily_tenant_usage, stripe_meter_reports],
        partition_key=day.isoformat(),
        resources=resources,
        raise_on_error=False,
    )
    assert result.success


def test_a_switch_to_annual_mid_day_does_not_split_that_days_usage(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    embedded_services: dict[str, str],
    long_grace: None,
) -> None:
    """The yearly base item starts its period at the switch (16:40), but usage keeps its
    monthly period: the switch day is one usage day, billed whole on the usage line."""
    c = stripe_client
    support.catalog(c)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    tenant = "t-switch-1640"
    sub, clock = annual_tenant(c, billing_db_url, tenant, cycle="monthly")
    usage_item = next(
        i
        for i in c.v1.subscriptions.retrieve(sub)["items"].data
        if i.price.lookup_key.endswith("_monthly") and i.price.recurring.usage_type == "metered"
    )
    base_item = next(
        i
        for i in c.v1.subscriptions.retrieve(sub)["items"].data
        if i.price.recurring.usage_type == "licensed"
    )
    renewal_ts = usage_item.current_period_end

    def midnight(day: date) -> datetime:
        return wh.day_bounds(day)[0]

    d0, d1, d2 = (SIGN_UP.date() + timedelta(days=n) for n in range(3))
    switch = midnight(d2) + timedelta(hours=16, minutes=40)
    insert(tenant, "sign-up-day-", 30_000, SIGN_UP, midnight(d1))
    insert(tenant, "day-two-", 40_000, midnight(d1), midnight(d2))
    insert(tenant, "switch-before-", 20_000, midnight(d2), switch)
    insert(tenant, "switch-after-", 25_000, switch, midnight(d2 + timedelta(days=1)))
    for day in (d0, d1):
        advance(c, clock, int((midnight(day) + timedelta(days=1, minutes=10)).timestamp()))
        push_day(resources, day)
    advance(c, clock, int(switch.timestamp()))
    yearly = c.v1.prices.list({"lookup_keys": ["pro_base_yearly"]}).data[0].id
    c.v1.subscriptions.update(
        sub,
        {
            "items": [{"id": base_item.id, "price": yearly}],
            "proration_date": int(switch.timestamp()),
            "proration_behavior": "always_invoice",
        },
    )
    advance(c, clock, int((midnight(d2) + timedelta(days=1, minutes=10)).timestamp()))
    push_day(resources, d2)
    advance(c, clock, renewal_ts + GRACE + 3600)

    usage_lines = [
        (line.period.start, line.quantity, line.amount)
        for inv in c.v1.invoices.list({"subscription": sub, "limit": 10}).data
        if inv.billing_reason == "subscription_cycle"
        for line in inv.lines.data
        if line.quantity is not None
        and line.period.start != line.period.end
        and line.amount not in (9_900, 99_000)
    ]
    # 30,000 + 40,000 + 20,000 + 25,000 = 115,000 queries in [sign-up, renewal): 15,000 over
    # Pro's 100,000 at $0.0008 = $12.00; the 20,000 before 16:40 are not lost.
    assert usage_lines == [(int(SIGN_UP.timestamp()), 115_000, 1200)]


def test_annual_tenant_usage_is_billed_and_audited_per_monthly_period(
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
    sub, clock = annual_tenant(c, billing_db_url)
    items = {i.price.lookup_key: i for i in c.v1.subscriptions.retrieve(sub)["items"].data}
    year = items["pro_base_yearly"]
    renewal_ts = items["pro_queries_overage_monthly"].current_period_end
    renewal = datetime.fromtimestamp(renewal_ts, UTC)
    assert (renewal.hour, renewal.minute) == (9, 5)
    assert year.current_period_end > renewal_ts + 300 * 86400  # the fee's period is a year

    def midnight(day: date) -> datetime:
        return wh.day_bounds(day)[0]

    d0, d1, db = SIGN_UP.date(), SIGN_UP.date() + timedelta(days=1), renewal.date()
    insert(TENANT, "before-sign-up-", 500, midnight(d0), SIGN_UP)  # billed by no period
    insert(TENANT, "sign-up-day-", 60_000, SIGN_UP, midnight(d1))
    insert(TENANT, "day-two-", 45_000, midnight(d1), midnight(d1 + timedelta(days=1)))
    insert(TENANT, "renewal-before-", 8_000, midnight(db), renewal)
    insert(TENANT, "renewal-after-", 70_000, renewal, midnight(db + timedelta(days=1)))
    insert(
        TENANT,
        "after-renewal-",
        35_500,
        midnight(db + timedelta(days=1)),
        midnight(db) + timedelta(days=2),
    )

    def push(day: date) -> None:
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

    for day in (d0, d1):
        advance(c, clock, int((midnight(day) + timedelta(days=1, minutes=10)).timestamp()))
        push(day)
    advance(c, clock, int((midnight(db) + timedelta(days=1, minutes=10)).timestamp()))
    push(db)
    advance(c, clock, renewal_ts + GRACE + 3600)
    push(db)
    push(db + timedelta(days=1))
    next_end = min(i.current_period_end for i in c.v1.subscriptions.retrieve(sub)["items"].data)
    advance(c, clock, next_end + GRACE + 3600)

    invoices = c.v1.invoices.list({"subscription": sub, "limit": 10}).data
    lines = [
        (line.period.start, line.quantity, line.amount)
        for inv in invoices
        if inv.status != "draft"
        for line in inv.lines.data
    ]
    metered = sorted(line for line in lines if line[2] != 99_000)
    # Period 1 [09:05 sign-up, 09:05 renewal): 60,000 + 45,000 + 8,000 = 113,000 queries,
    # 13,000 over Pro's 100,000 at $0.0008 = $10.40. Period 2 from 09:05: 70,000 + 35,500 =
    # 105,500, 5,500 over = $4.40. The 500 before the sign-up are in no period.
    assert metered == [
        (int(SIGN_UP.timestamp()), 113_000, 1040),
        (renewal_ts, 105_500, 440),
    ]
    # The yearly fee is billed once, at the sign-up, for its year; monthly renewals bill usage.
    assert [start for start, _, amount in lines if amount == 99_000] == [int(SIGN_UP.timestamp())]

    audit = dg.materialize(
        [stripe_subscription_snapshot, stripe_invoice_snapshot, usage_invoice_audit],
        resources=resources,
    )
    assert audit.success
    rows: list[dict[str, Any]] = query(
        billing_db_url,
        "SELECT period_start, warehouse_queries, invoice_quantity, difference_cents, causes "
        "FROM usage_invoice_audit WHERE tenant_id = %s ORDER BY period_start",
        (TENANT,),
    )
    assert [
        (r["warehouse_queries"], r["invoice_quantity"], r["difference_cents"]) for r in rows
    ] == [
        (113_000, 113_000, 0),
        (105_500, 105_500, 0),
    ]
    assert [r["causes"] for r in rows] == [[], []]
