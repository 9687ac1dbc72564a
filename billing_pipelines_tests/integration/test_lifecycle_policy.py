"""The plan-change, cancellation and resume policy through the lifecycle actions.

Real catalog (plans.toml), Stripe sandbox, embedded PostgreSQL; clocks start at afternoon
instants and on a month-end anchor. Expected amounts are worked out by hand from plans.toml.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import stripe
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as stripe_catalog
from billing_pipelines_tests.support import advance, present

DAY = 86_400
HOUR = 3_600
JAN31_1430 = 1769869800  # 2026-01-31T14:30:00Z: the period ends 2026-02-28T14:30:00Z
FEB28_1430 = JAN31_1430 + 28 * DAY
MAR15_0945 = 1773567900  # 2026-03-15T09:45:00Z: the period ends 2026-04-15T09:45:00Z


@pytest.fixture
def catalog(stripe_client: stripe.StripeClient) -> Catalog:
    loaded = load_catalog()
    stripe_catalog.sync_catalog(stripe_client, loaded)
    return loaded


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as c:
        yield c


def _onboard(
    conn: Any, client: stripe.StripeClient, catalog: Catalog, plan: str, start: int, **kw: Any
) -> tuple[str, str, lifecycle.LifecycleResult]:
    tenant = f"lp-{uuid.uuid4().hex[:8]}"
    clock = str(client.v1.test_helpers.test_clocks.create({"frozen_time": start}).id)
    with conn.transaction():
        result = lifecycle.onboard(
            conn,
            client,
            catalog,
            lifecycle.OnboardRequest(
                tenant_id=tenant,
                name="Acme",
                email="ops@acme.test",
                plan=plan,
                test_clock=clock,
                **kw,
            ),
        )
    return tenant, clock, result


def _use(client: stripe.StripeClient, customer: str, at: int, queries: int) -> None:
    client.v1.billing.meter_events.create(
        {
            "event_name": "rag_api_queries",
            "timestamp": at,
            "identifier": f"{customer}-{at}",
            "payload": {"stripe_customer_id": customer, "value": str(queries)},
        }
    )


def _price_key(client: stripe.StripeClient, line: stripe.InvoiceLineItem) -> str:
    price = present(present(line.pricing).price_details).price
    return str(client.v1.prices.retrieve(str(price)).lookup_key)


def test_upgrade_bills_each_part_by_its_plan_and_says_so_everywhere(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    c = stripe_client
    tenant, clock, result = _onboard(
        conn, c, catalog, "starter", JAN31_1430, payment_method="pm_card_visa", trial=False
    )
    customer = str(result.customer_id)
    sub = c.v1.subscriptions.retrieve(str(result.subscription_id))
    assert sub.billing_mode.type == "flexible"
    change = JAN31_1430 + 10 * DAY + 3 * HOUR  # 2026-02-10T17:30:00Z
    advance(c, clock, change)
    _use(c, customer, JAN31_1430 + 2 * DAY, 30_000)  # Feb 2
    _use(c, customer, JAN31_1430 + 9 * DAY, 5_000)  # Feb 9
    with conn.transaction():
        preview = lifecycle.preview_plan_change(conn, c, catalog, tenant, "pro")
    # Starter part: 35,000 - 10,000 included = 25,000 x $0.001 = $25.00. Base fee: 1,544,400 of
    # 2,419,200 seconds remain: -2900 x that = -1851, +9900 x that = +6320. Due now: $69.69.
    note = (
        "Queries before the change are billed on Starter with its 10,000 included queries "
        "(35,000 queries so far: $25.00); queries from the change to the end of the period are "
        "billed on Pro with its own 100,000 included queries."
    )
    assert preview.proration_date == change
    assert preview.amount_due == 2500 - 1851 + 6320
    assert preview.included_queries == note and note in preview.describe()
    with conn.transaction():
        changed = lifecycle.change_plan(
            conn, c, catalog, tenant, "pro", preview.proration_date, preview=preview
        )
    assert note in changed.detail
    now_invoice = next(
        i
        for i in c.v1.invoices.list({"customer": customer}).data
        if i.billing_reason == "subscription_update"
    )
    assert now_invoice.amount_paid == 6969
    email = conn.execute(
        "SELECT subject, body FROM notification_outbox WHERE tenant_id = %s "
        "AND template = 'plan_changed'",
        (tenant,),
    ).fetchall()
    assert len(email) == 1
    body = " ".join(email[0]["body"].split())
    assert note in body and "$69.69 is due now" in body
    # Pro part, after the change: 150,000 - 100,000 included = 50,000 x $0.0008 = $40.00.
    advance(c, clock, JAN31_1430 + 21 * DAY)
    _use(c, customer, JAN31_1430 + 11 * DAY, 120_000)  # Feb 11
    _use(c, customer, JAN31_1430 + 20 * DAY, 30_000)  # Feb 20
    advance(c, clock, FEB28_1430 + 2 * HOUR)
    renewal = next(
        i
        for i in c.v1.invoices.list({"customer": customer}).data
        if i.billing_reason == "subscription_cycle"
    )
    usage = [
        ln for ln in renewal.lines.data if _price_key(c, ln).endswith("queries_overage_monthly")
    ]
    assert [(_price_key(c, ln), ln.quantity, ln.amount) for ln in usage] == [
        ("pro_queries_overage_monthly", 150_000, 4000)
    ]
    assert (usage[0].period.start, usage[0].period.end) == (change, FEB28_1430)
    assert renewal.amount_paid == 9900 + 4000


def test_cancel_now_invoices_the_unbilled_usage_and_credits_the_unused_base_fee(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    c = stripe_client
    tenant, clock, result = _onboard(
        conn, c, catalog, "pro", MAR15_0945, payment_method="pm_card_visa", trial=False
    )
    customer = str(result.customer_id)
    cancel_at = MAR15_0945 + 12 * DAY + 6 * HOUR  # 2026-03-27T15:45:00Z
    advance(c, clock, cancel_at)
    _use(c, customer, MAR15_0945 + 5 * DAY, 250_000)
    with conn.transaction():
        gone = lifecycle.cancel(conn, c, catalog, tenant, immediately=True)
    assert gone.subscription_status == "canceled" and not gone.api_access_enabled
    advance(c, clock, cancel_at + 2 * HOUR)
    final = c.v1.invoices.retrieve(
        str(c.v1.subscriptions.retrieve(str(result.subscription_id)).latest_invoice)
    )
    # 250,000 - 100,000 included = 150,000 x $0.0008 = $120.00; 18.75 of 31 days of the $99 base
    # fee unused: -5987.90 -> -5988.
    assert sorted(ln.amount for ln in final.lines.data) == [-5988, 12000]
    assert final.status == "paid" and final.amount_paid == 12000 - 5988


def test_resume_stays_paused_until_paid_and_stripe_retries(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    c = stripe_client
    tenant, clock, result = _onboard(conn, c, catalog, "pro", MAR15_0945)
    advance(c, clock, MAR15_0945 + 15 * DAY + 5 * HOUR)  # the trial ended without a card
    with conn.transaction():
        carded = lifecycle.update_payment_method(
            conn, c, catalog, tenant, "pm_card_chargeCustomerFail"
        )
    assert carded.subscription_status == "paused"
    with conn.transaction():
        waiting = lifecycle.reactivate(conn, c, catalog, tenant)
    assert waiting.detail.startswith("resume waits for payment")
    assert waiting.subscription_status == "paused" and not waiting.api_access_enabled
    sub = c.v1.subscriptions.retrieve(str(result.subscription_id))
    invoice = c.v1.invoices.retrieve(str(sub.latest_invoice))
    assert invoice.attempt_count == 1 and invoice.next_payment_attempt is not None
    with conn.transaction():
        fixed = lifecycle.update_payment_method(conn, c, catalog, tenant, "pm_card_visa")
    assert fixed.extra["paid"] == [invoice.id]
    assert fixed.subscription_status == "active" and fixed.api_access_enabled


def test_a_classic_mode_subscription_is_not_changed_silently(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    """Classic mode would drop the usage before the change: the change is refused, one line."""
    c = stripe_client
    tenant, _, result = _onboard(
        conn, c, catalog, "starter", JAN31_1430, payment_method="pm_card_visa", trial=False
    )
    flexible = c.v1.subscriptions.retrieve(str(result.subscription_id))
    c.v1.subscriptions.cancel(flexible.id)
    classic = c.v1.subscriptions.create(
        {
            "customer": str(result.customer_id),
            "items": [{"price": str(item.price.id)} for item in flexible["items"].data],
            "billing_mode": {"type": "classic"},
        }
    )
    conn.execute(
        "UPDATE tenants SET stripe_subscription_id = %s WHERE tenant_id = %s", (classic.id, tenant)
    )
    with pytest.raises(lifecycle.LifecycleError) as err:
        lifecycle.preview_plan_change(conn, c, catalog, tenant, "pro")
    assert str(err.value) == (
        f"subscription {classic.id} uses classic billing mode, which does not bill the usage "
        "before a price change: migrate it to flexible in Stripe before changing plans"
    )
    assert [str(i.price.id) for i in c.v1.subscriptions.retrieve(classic.id)["items"].data] == [
        str(i.price.id) for i in classic["items"].data
    ]
