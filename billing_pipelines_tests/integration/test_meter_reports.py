"""Usage to Stripe end to end: catalog sync, exactly-once meter reports and their checks, against
the Stripe sandbox, embedded PostgreSQL and the chDB warehouse."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle, SandboxState, Settings, run_in_thread

from billing_pipelines.defs.metering.assets import stripe_catalog, stripe_meter_reports
from billing_pipelines.defs.metering.checks import meter_totals_match_warehouse
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe.catalog import sync_catalog
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.support import (
    API_KEY,
    SimulatedCrash,
    advance,
    present,
    unthrottled_client,
)

PREFIX = "mt-"
TODAY = datetime.now(UTC).date()
DAY = TODAY - timedelta(days=3)  # a recent, complete UTC day: inside Stripe's 35-day window


@dataclasses.dataclass
class Env:
    sandbox: SandboxHandle
    client: stripe.StripeClient
    database_url: str
    clickhouse_url: str
    resources: dict[str, Any]
    # The tests' own set-up requests, through a door without rate limits (support.py).
    setup: stripe.StripeClient

    def tenant(self, plan: str = "pro", clock: str | None = None, billable: bool = True) -> str:
        """A tenant in the billing DB, with a Stripe customer and subscription when billable."""
        tenant_id = f"{PREFIX}{uuid.uuid4().hex[:8]}"
        customer = subscription = None
        if billable:
            params: dict[str, Any] = {"metadata": {"tenant_id": tenant_id}}
            if clock:
                params["test_clock"] = clock
            cus = self.setup.v1.customers.create(params)  # type: ignore[arg-type]
            pm = self.setup.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
            self.setup.v1.customers.update(
                cus.id, {"invoice_settings": {"default_payment_method": pm.id}}
            )
            prices = self.setup.v1.prices.list(
                {"lookup_keys": [f"{plan}_base_monthly", f"{plan}_queries_overage_monthly"]}
            ).data
            sub = self.setup.v1.subscriptions.create(
                {"customer": cus.id, "items": [{"price": p.id} for p in prices]}
            )
            customer, subscription = cus.id, sub.id
        with psycopg.connect(self.database_url) as conn:
            conn.execute(
                "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
                "stripe_subscription_id) VALUES (%s, %s, %s, %s, %s, %s)",
                (tenant_id, tenant_id, f"{tenant_id}@example.com", plan, customer, subscription),
            )
        return tenant_id

    def customer(self, tenant_id: str) -> str:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT stripe_customer_id FROM tenants WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
        assert row is not None
        return str(row[0])

    def insert_queries(
        self, tenant_id: str, first: int, count: int, day: date = DAY, copies: int = 1
    ) -> None:
        """`count` distinct queries (ids first..first+count-1), each logged `copies` times."""
        start, _ = wh.day_bounds(day)
        client = wh.connect(self.clickhouse_url)
        client.command(
            """
            INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
                tokens_used, embeddings_count, latency_ms)
            SELECT generateUUIDv4(), concat({tenant:String}, '-q', toString({first:UInt64} + n)),
                   {tenant:String}, {start:DateTime64(3, 'UTC')} + toIntervalSecond(n % 80000),
                   'query', 12, 1, 40
            FROM (SELECT number % {count:UInt64} AS n FROM numbers({rows:UInt64}))
            """,
            parameters={
                "tenant": tenant_id,
                "first": first,
                "start": start,
                "count": count,
                "rows": count * copies,
            },
        )

    def stripe_day_total(self, tenant_id: str, day: date = DAY) -> int:
        meter_ids = stripe_meters.active_meter_ids(self.client)
        total = stripe_meters.day_total(
            self.client, meter_ids["rag_api_queries"], self.customer(tenant_id), day
        )
        return int(total)

    def push(self, day: date = DAY, **config: Any) -> dg.ExecuteInProcessResult:
        """The daily job: usage, then meter reports, then the totals check."""
        result = dg.materialize(
            [daily_tenant_usage, stripe_meter_reports, meter_totals_match_warehouse],
            partition_key=day.isoformat(),
            resources=self.resources,
            run_config={
                "ops": {
                    "stripe_meter_reports": {"config": config},
                    # The sandbox's summaries are immediately consistent: settle briefly.
                    "stripe_meter_reports_meter_totals_match_warehouse": {
                        "config": {"settle_seconds": 1, "poll_seconds": 0.5}
                    },
                }
            },
            raise_on_error=False,
        )
        return result


def metadata(result: dg.ExecuteInProcessResult, node: str = "stripe_meter_reports") -> dict:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def env(embedded_services: dict[str, str], fresh_database_url: str) -> Iterator[Env]:
    # A sandbox with its own seed: its object ids never collide with other tests' leftovers.
    handle = run_in_thread(port=0, seed=random.randrange(1, 10**9))
    handle.state.settings = Settings(webhook_backoff_seconds=[0.05])
    client = stripe_api.make_client(API_KEY, api_base=handle.url, max_network_retries=0)
    # A billing database of the test's own: the totals check reads every billable tenant's
    # pushed days in its window, and another module's tenants (billed through another Stripe
    # sandbox) must not be among them.
    database_url, clickhouse_url = fresh_database_url, embedded_services["CLICKHOUSE_URL"]
    ch = wh.connect(clickhouse_url)
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    resources = {
        "billing_db": BillingDatabase(url=database_url),
        "warehouse": UsageWarehouse(url=clickhouse_url),
        "stripe": StripeResource(api_key=API_KEY, api_base=handle.url, max_network_retries=0),
    }
    with psycopg.connect(database_url) as conn:  # migrate before the first direct write
        pass
    from billing_pipelines.lib.pg import migrations

    migrations.upgrade_to_head(database_url)
    _cleanup(database_url)
    assert dg.materialize([stripe_catalog], resources=resources).success
    try:
        with unthrottled_client(handle.state) as setup:
            yield Env(handle, client, database_url, clickhouse_url, resources, setup)
    finally:
        handle.stop()
        _cleanup(database_url)
        del conn


def _cleanup(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for table in ("usage_report_ledger", "daily_tenant_usage", "tenants"):
            conn.execute(f"DELETE FROM {table} WHERE tenant_id LIKE %s", (PREFIX + "%",))


# --- catalog ---------------------------------------------------------------------------------


def test_catalog_sync_is_idempotent_and_a_changed_price_moves_its_lookup_key(env: Env) -> None:
    c = env.client
    again = dg.materialize([stripe_catalog], resources=env.resources)
    assert metadata(again, "stripe_catalog")["changes"] == 0
    # Three plans x (monthly base + usage), plus the yearly base of pro and enterprise.
    assert len(c.v1.prices.list({"limit": 100}).data) == 8
    assert len(stripe_meters.active_meter_ids(c)) == 1
    (meter,) = c.v1.billing.meters.list().data
    assert meter.event_time_window == "day" and meter.default_aggregation.formula == "sum"

    old = c.v1.prices.list({"lookup_keys": ["pro_queries_overage_monthly"]}).data[0]
    catalog = load_catalog()
    pro = dataclasses.replace(catalog.plans["pro"], overage_cents_per_query=Decimal("0.07"))
    changed = dataclasses.replace(catalog, plans={**catalog.plans, "pro": pro})
    report = sync_catalog(c, changed)
    assert len(report.changes) == 1 and "pro_queries_overage_monthly" in report.changes[0]
    new = c.v1.prices.list(
        {"lookup_keys": ["pro_queries_overage_monthly"], "expand": ["data.tiers"]}
    ).data[0]
    assert new.id != old.id and present(new.tiers)[1].unit_amount_decimal == Decimal("0.07")
    kept = c.v1.prices.retrieve(old.id, {"expand": ["tiers"]})
    assert (
        kept.active
        and kept.lookup_key is None
        and present(kept.tiers)[1].unit_amount_decimal == Decimal("0.08")
    )
    assert sync_catalog(c, changed).changes == []


# --- exactly once --------------------------------------------------------------------------


def test_five_materializations_bill_distinct_queries_once(env: Env) -> None:
    doubled, single = env.tenant(), env.tenant("starter")
    env.insert_queries(doubled, 0, 300, copies=2)  # the cache logged every query twice
    env.insert_queries(single, 0, 40)
    sent = []
    for _ in range(5):
        result = env.push()
        assert result.success
        sent.append(metadata(result)["sent"])
        assert checks(result)["meter_totals_match_warehouse"].passed
    assert sent == [2, 0, 0, 0, 0]
    assert env.stripe_day_total(doubled) == 300
    assert env.stripe_day_total(single) == 40
    usage = metadata(result, "daily_tenant_usage")
    assert usage["billable_queries"] == 340 and usage["duplicate_events_removed"] == 300


def test_late_events_converge_stripe_to_the_new_truth(env: Env) -> None:
    late, steady = env.tenant(), env.tenant()
    env.insert_queries(late, 0, 100)
    env.insert_queries(steady, 0, 10)
    assert env.push().success
    env.insert_queries(late, 100, 25)  # late events for the same past day
    env.insert_queries(late, 0, 100)  # and a replay of ids already billed
    result = env.push()
    assert result.success
    assert metadata(result)["sent"] == 1 and metadata(result)["unchanged"] == 1
    assert checks(result)["meter_totals_match_warehouse"].passed
    assert env.stripe_day_total(late) == 125
    assert env.stripe_day_total(steady) == 10
    with psycopg.connect(env.database_url) as conn:
        versions = conn.execute(
            "SELECT value_version, value, status FROM usage_report_ledger "
            "WHERE tenant_id = %s ORDER BY value_version",
            (late,),
        ).fetchall()
    assert versions == [(1, 100, "delivered"), (2, 125, "delivered")]


def test_crash_after_stripe_accepts_before_ledger_confirms_then_rerun(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenants = [env.tenant() for _ in range(30)]
    for i, tenant in enumerate(tenants):
        env.insert_queries(tenant, 0, 10 + i)
    real = ledger.record_outcomes
    flushes: list[int] = []

    def dies_on_second_flush(conn: Any, outcomes: Any) -> None:
        outcomes = list(outcomes)
        if flushes:
            raise SimulatedCrash  # Stripe accepted these events; the ledger never hears of it
        flushes.append(len(outcomes))
        real(conn, outcomes)

    monkeypatch.setattr(ledger, "record_outcomes", dies_on_second_flush)
    crashed = env.push(workers=2)
    assert not crashed.success
    monkeypatch.undo()
    with psycopg.connect(env.database_url) as conn:
        statuses: dict[str, int] = dict(
            conn.execute(
                "SELECT status, count(*) FROM usage_report_ledger WHERE tenant_id LIKE %s "
                "GROUP BY status",
                (PREFIX + "%",),
            ).fetchall()
        )
    assert statuses["delivered"] == flushes[0] and statuses["pending"] == 30 - flushes[0]

    result = env.push()
    assert result.success
    meta = metadata(result)
    assert meta["already_delivered"] >= 1  # accepted before the crash: replayed, not re-added
    assert meta["sent"] + meta["already_delivered"] == 30 - flushes[0]
    assert checks(result)["meter_totals_match_warehouse"].passed
    assert [env.stripe_day_total(t) for t in tenants] == [10 + i for i in range(30)]


# --- money ---------------------------------------------------------------------------------


def test_invoice_for_125000_queries_on_pro_bills_25000_overage_for_20_dollars(env: Env) -> None:
    c = env.client
    start = int(wh.day_bounds(DAY)[0].timestamp())
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": start})
    tenant = env.tenant("pro", clock=clock.id)
    advance(c, clock.id, start + 86400 + 1800)  # the day is over: push it
    env.insert_queries(tenant, 0, 125_000)
    result = env.push()
    assert result.success and checks(result)["meter_totals_match_warehouse"].passed
    sub = c.v1.subscriptions.list({"customer": env.customer(tenant)}).data[0]
    period_end = sub["items"].data[0].current_period_end
    advance(c, clock.id, period_end + 2 * 3600)  # period over and the grace hour passed
    invoice = c.v1.invoices.list({"subscription": sub.id, "status": "paid"}).data[0]
    usage_line = next(ln for ln in invoice.lines.data if ln.amount != 9900)
    included = load_catalog().plans["pro"].included_queries
    assert usage_line.quantity == 125_000
    assert usage_line.quantity - included == 25_000
    assert usage_line.amount == 2000  # $20.00: 25,000 x $0.0008
    assert load_catalog().plans["pro"].overage_cents(usage_line.quantity) == Decimal(2000)


# --- window and billability ------------------------------------------------------------------


def test_changed_day_beyond_35_days_is_flagged_with_tenants_and_amounts(env: Env) -> None:
    c = env.client
    start = int(wh.day_bounds(DAY)[0].timestamp())
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": start})
    old = env.tenant("pro", clock=clock.id)
    fresh = env.tenant("pro")
    orphan = env.tenant(billable=False)
    advance(c, clock.id, start + 86400 + 1800)
    env.insert_queries(old, 0, 50)
    env.insert_queries(fresh, 0, 5)
    env.insert_queries(orphan, 0, 7)
    first = env.push()
    assert first.success
    assert checks(first)["usage_within_stripe_window"].passed
    billable = checks(first)["usage_tenants_billable"]
    assert not billable.passed and billable.severity == dg.AssetCheckSeverity.WARN
    assert orphan in billable.metadata["tenants"].value
    assert orphan in str(billable.description) and "billing tenant create" in str(
        billable.description
    )

    advance(c, clock.id, start + 40 * 86400)  # for this customer the day is now 40 days old
    env.insert_queries(old, 50, 8)  # and late events change it
    env.insert_queries(fresh, 5, 1)
    second = env.push()
    assert second.success  # the rest of the day is delivered ...
    window = checks(second)["usage_within_stripe_window"]
    assert not window.passed and window.severity == dg.AssetCheckSeverity.ERROR
    table = window.metadata["tenants"].value
    assert f"| {old} | queries | 58 | 50 |" in table  # tenant, metric, truth, billed
    assert metadata(second)["out_of_window"] == 1
    assert env.stripe_day_total(fresh) == 6
    totals = checks(second)["meter_totals_match_warehouse"]
    assert not totals.passed and totals.metadata["under_billed_units"].value == 8
    assert old in str(window.description) and "by hand" in str(window.description)
    assert old in str(totals.description) and f"partition {DAY}" in str(totals.description)
    # ... and a re-run neither drops nor re-sends the stranded total: still flagged.
    third = env.push()
    assert metadata(third)["sent"] == 0
    assert not checks(third)["usage_within_stripe_window"].passed


# --- pacing --------------------------------------------------------------------------------


def test_rate_limited_stripe_429s_are_retried_until_delivered(env: Env) -> None:
    tenants = [env.tenant() for _ in range(12)]
    for i, tenant in enumerate(tenants):
        env.insert_queries(tenant, 0, 1 + i)
    limited = run_in_thread(port=0, state=env.sandbox.state, rate_limit=4)
    try:
        resources = {
            **env.resources,
            "stripe": StripeResource(api_key=API_KEY, api_base=limited.url, max_network_retries=0),
        }
        result = dg.materialize(
            [daily_tenant_usage, stripe_meter_reports],
            partition_key=DAY.isoformat(),
            resources=resources,
            # Deliberately faster than the account allows: Stripe answers 429, we back off.
            run_config={"ops": {"stripe_meter_reports": {"config": {"requests_per_second": 40}}}},
        )
    finally:
        limited.stop()
    assert result.success and metadata(result)["sent"] == 12
    assert [env.stripe_day_total(t) for t in tenants] == list(range(1, 13))


def test_no_meter_in_stripe_fails_with_a_clear_message(embedded_services: dict[str, str]) -> None:
    handle = run_in_thread(port=0, state=SandboxState(seed=random.randrange(1, 10**9)))
    try:
        result = dg.materialize(
            [stripe_meter_reports],
            partition_key=DAY.isoformat(),
            resources={
                "billing_db": BillingDatabase(url=embedded_services["DATABASE_URL"]),
                "stripe": StripeResource(api_key=API_KEY, api_base=handle.url),
                "warehouse": UsageWarehouse(url=embedded_services["CLICKHOUSE_URL"]),
            },
            raise_on_error=False,
        )
    finally:
        handle.stop()
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "materialize stripe_catalog first" in str(failure.event_specific_data)
