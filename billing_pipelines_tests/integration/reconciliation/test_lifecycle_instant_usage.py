"""A plan change and an immediate cancellation at odd instants of the day, through the admin
jobs as Dagster loads them: the old part of the period bills exactly the queries before the
instant (today's so far and a day the nightly push had not reached), the new plan exactly those
after it, and the nightly push of the change day sends only the part after it.

Expected quantities are counted by hand from the raw events each test inserts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle
from psycopg.rows import dict_row

from billing_pipelines.definitions import defs
from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    usage_invoice_audit,
)
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.integration.reconciliation.test_period_boundary_push import insert
from billing_pipelines_tests.support import API_KEY, advance, present
from billing_pipelines_tests.webhook_harness import query

TODAY = datetime.now(UTC).date()


def midnight(day: date) -> datetime:
    return wh.day_bounds(day)[0]


@pytest.fixture
def env(
    stripe_sandbox: SandboxHandle,
    billing_db_url: str,
    embedded_services: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """The admin jobs' resources from the environment (as `billing tenant ...` runs them), an
    empty warehouse, the catalog in the sandbox; yields the resources for the asset runs."""
    monkeypatch.setenv("DATABASE_URL", billing_db_url)
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", stripe_sandbox.url)
    monkeypatch.setenv("CLICKHOUSE_URL", embedded_services["CLICKHOUSE_URL"])
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    yield support.resources(stripe_sandbox.url, billing_db_url)


def _onboard(
    c: stripe.StripeClient, db_url: str, plan: str, start: datetime
) -> tuple[str, str, str, str]:
    """A tenant on `plan` from `start`, with a card, no trial (flexible billing mode)."""
    support.catalog(c)
    tenant = f"li-{uuid.uuid4().hex[:8]}"
    clock = str(c.v1.test_helpers.test_clocks.create({"frozen_time": int(start.timestamp())}).id)
    with psycopg.connect(db_url, row_factory=dict_row) as conn, conn.transaction():
        result = lifecycle.onboard(
            conn,
            c,
            load_catalog(),
            lifecycle.OnboardRequest(
                tenant_id=tenant,
                name="Acme",
                email="ops@acme.test",
                plan=plan,
                payment_method="pm_card_visa",
                trial=False,
                test_clock=clock,
            ),
        )
    return tenant, str(result.customer_id), str(result.subscription_id), clock


def _nightly(c: stripe.StripeClient, clock: str, resources: dict[str, Any], day: date) -> None:
    """The day's usage and meter push, as the schedules run them just after the day ends (or
    as a re-run does, when the clock is already later)."""
    due = int((midnight(day) + timedelta(days=1, minutes=10)).timestamp())
    if due > c.v1.test_helpers.test_clocks.retrieve(clock).frozen_time:
        advance(c, clock, due)
    result = dg.materialize(
        [daily_tenant_usage, stripe_meter_reports],
        partition_key=day.isoformat(),
        resources=resources,
    )
    assert result.success


def _admin_job(name: str, op: str, config: dict[str, Any]) -> dg.ExecuteInProcessResult:
    return (
        defs()
        .resolve_job_def(name)
        .execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            run_config={"ops": {op: {"config": config}}},
        )
    )


def _usage_lines(c: stripe.StripeClient, customer: str) -> list[tuple[str, int, int, int]]:
    """(price lookup key, period start, period end, quantity) of every metered line billed."""
    out = []
    for inv in c.v1.invoices.list({"customer": customer, "limit": 20}).data:
        if inv.status == "draft":
            continue
        for line in inv.lines.data:
            price = present(present(line.pricing).price_details).price
            key = str(c.v1.prices.retrieve(str(price)).lookup_key)
            if key.endswith("queries_overage_monthly"):
                out.append((key, line.period.start, line.period.end, int(line.quantity or 0)))
    return sorted(out, key=lambda r: r[1])


def _ledger_values(db_url: str, tenant: str, day: date) -> tuple[int, datetime]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        entry = ledger.latest_entries(conn, day)[(tenant, "queries")]
        stamp = conn.execute(
            "SELECT event_timestamp FROM usage_report_ledger WHERE id = %s", (entry.id,)
        ).fetchone()
    assert stamp is not None and entry.status == "delivered"
    return entry.value, stamp["event_timestamp"]


def test_plan_change_at_17_31_bills_the_old_plan_the_queries_before_it_and_the_new_the_rest(
    stripe_client: stripe.StripeClient, billing_db_url: str, env: dict[str, Any]
) -> None:
    c = stripe_client
    sign_up = midnight(TODAY - timedelta(days=30)) + timedelta(hours=9, minutes=15, seconds=42)
    tenant, customer, sub, clock = _onboard(c, billing_db_url, "starter", sign_up)
    d0 = sign_up.date()
    change_day = d0 + timedelta(days=5)
    change = midnight(change_day) + timedelta(hours=17, minutes=31, seconds=7)
    day_before = change_day - timedelta(days=1)
    insert(tenant, "before-sign-up-", 1_000, midnight(d0), sign_up)  # no period bills these
    insert(tenant, "sign-up-day-", 3_000, sign_up, midnight(d0 + timedelta(days=1)))
    insert(
        tenant,
        "day-two-",
        4_000,
        midnight(d0 + timedelta(days=1)),
        midnight(d0 + timedelta(days=2)),
    )
    insert(tenant, "day-before-", 2_200, midnight(day_before), midnight(change_day))
    insert(tenant, "change-day-before-", 2_500, midnight(change_day), change)
    insert(tenant, "change-day-after-", 1_700, change, midnight(change_day + timedelta(days=1)))
    insert(
        tenant,
        "next-day-",
        6_000,
        midnight(change_day + timedelta(days=1)),
        midnight(change_day + timedelta(days=2)),
    )
    for day in (d0, d0 + timedelta(days=1), d0 + timedelta(days=2), d0 + timedelta(days=3)):
        _nightly(c, clock, env, day)
    # The day before the change is not pushed yet (its nightly run failed, say): the change at
    # 17:31:07 pushes it whole, and the change day up to 17:31:07, before changing prices.
    advance(c, clock, int(change.timestamp()))
    result = _admin_job(
        "change_plan", "change_plan_op", {"tenant_id": tenant, "to_plan": "pro", "apply": True}
    )
    assert result.success
    value, stamp = _ledger_values(billing_db_url, tenant, change_day)
    assert value == 2_500 and stamp < change
    # The nightly pushes after it: the day before is settled, the change day now carries its
    # part from 17:31:07 (timestamped at or after the change), then the next day.
    for day in (day_before, change_day, change_day + timedelta(days=1)):
        _nightly(c, clock, env, day)
    value, stamp = _ledger_values(billing_db_url, tenant, change_day)
    assert value == 1_700 and stamp >= change
    renewal = c.v1.subscriptions.retrieve(sub)["items"].data[0].current_period_end
    advance(c, clock, renewal + 2 * 3600)
    # Starter, [sign-up, change): 3,000 + 4,000 + 2,200 + 2,500 = 11,700 (the 1,000 before
    # the sign-up are in no period). Pro, [change, renewal): 1,700 + 6,000 = 7,700.
    assert _usage_lines(c, customer) == [
        (
            "starter_queries_overage_monthly",
            int(sign_up.timestamp()),
            int(change.timestamp()),
            11_700,
        ),
        ("pro_queries_overage_monthly", int(change.timestamp()), renewal, 7_700),
    ]
    # 1,700 over starter's 10,000 included at $0.001: $1.70 on the change's invoice.
    change_invoice = next(
        i
        for i in c.v1.invoices.list({"customer": customer}).data
        if i.billing_reason == "subscription_update"
    )
    assert 170 in [ln.amount for ln in change_invoice.lines.data]
    audit = dg.materialize(
        [stripe_subscription_snapshot, stripe_invoice_snapshot, usage_invoice_audit],
        resources=env,
    )
    assert audit.success
    rows = query(
        billing_db_url,
        "SELECT warehouse_queries, invoice_quantity, difference_cents FROM usage_invoice_audit "
        "WHERE tenant_id = %s ORDER BY period_start",
        (tenant,),
    )
    assert [tuple(r.values()) for r in rows] == [(11_700, 11_700, 0), (7_700, 7_700, 0)]


def test_cancel_now_at_15_45_bills_every_query_before_it_and_none_after(
    stripe_client: stripe.StripeClient, billing_db_url: str, env: dict[str, Any]
) -> None:
    c = stripe_client
    sign_up = midnight(TODAY - timedelta(days=20)) + timedelta(hours=13, minutes=7, seconds=19)
    tenant, customer, sub, clock = _onboard(c, billing_db_url, "starter", sign_up)
    d0 = sign_up.date()
    cancel_day = d0 + timedelta(days=3)
    cancel_at = midnight(cancel_day) + timedelta(hours=15, minutes=45, seconds=33)
    insert(tenant, "sign-up-day-", 5_000, sign_up, midnight(d0 + timedelta(days=1)))
    insert(
        tenant,
        "day-two-",
        3_000,
        midnight(d0 + timedelta(days=1)),
        midnight(d0 + timedelta(days=2)),
    )
    insert(tenant, "cancel-day-before-", 4_321, midnight(cancel_day), cancel_at)
    insert(tenant, "cancel-day-after-", 999, cancel_at, midnight(cancel_day + timedelta(days=1)))
    for day in (d0, d0 + timedelta(days=1), d0 + timedelta(days=2)):
        _nightly(c, clock, env, day)
    advance(c, clock, int(cancel_at.timestamp()))
    result = _admin_job(
        "cancel_subscription",
        "cancel_subscription_op",
        {"tenant_id": tenant, "immediately": True},
    )
    assert result.success
    _nightly(c, clock, env, cancel_day)
    # The cancel day's event still carries its part before the cancellation.
    value, stamp = _ledger_values(billing_db_url, tenant, cancel_day)
    assert value == 4_321 and stamp < cancel_at
    advance(c, clock, int(cancel_at.timestamp()) + 2 * 86_400)
    # [sign-up, cancellation): 5,000 + 3,000 + 4,321 = 12,321; 2,321 over starter's 10,000 at
    # $0.001 = $2.32 (2.321 rounds down).
    assert _usage_lines(c, customer) == [
        (
            "starter_queries_overage_monthly",
            int(sign_up.timestamp()),
            int(cancel_at.timestamp()),
            12_321,
        ),
    ]
    final = c.v1.invoices.retrieve(str(c.v1.subscriptions.retrieve(sub).latest_invoice))
    assert final.status == "paid" and 232 in [ln.amount for ln in final.lines.data]
