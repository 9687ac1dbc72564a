"""Annual tenants through the lifecycle actions, against the Stripe sandbox and PostgreSQL.

An annual tenant pays the plan's yearly base fee (plans.toml `base_yearly_cents`) on one
mixed interval subscription beside the monthly metered usage price. Amounts are worked out by
hand from the catalog's prices and the calendar (clocks start at odd instants, never midnight).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import stripe
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as stripe_catalog
from billing_pipelines_tests.support import advance, present


def _at(year: int, month: int, day: int, hour: int, minute: int) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


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
    conn: Any, client: stripe.StripeClient, catalog: Catalog, start: int, **kw: Any
) -> tuple[str, str, lifecycle.LifecycleResult]:
    tenant = f"an-{uuid.uuid4().hex[:8]}"
    clock = str(client.v1.test_helpers.test_clocks.create({"frozen_time": start}).id)
    with conn.transaction():
        request = lifecycle.OnboardRequest(
            tenant_id=tenant,
            name="Acme",
            email="ops@acme.test",
            plan=kw.pop("plan", "pro"),
            payment_method="pm_card_visa",
            trial=False,
            test_clock=clock,
            **kw,
        )
        return tenant, clock, lifecycle.onboard(conn, client, catalog, request)


def _lookup_keys(client: stripe.StripeClient, sub_id: str) -> dict[str, tuple[int, int]]:
    sub = client.v1.subscriptions.retrieve(sub_id)
    return {
        str(i.price.lookup_key): (i.current_period_start, i.current_period_end)
        for i in sub["items"].data
    }


def test_annual_onboarding_bills_the_yearly_fee_beside_monthly_usage(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    start = _at(2026, 7, 9, 13, 17)
    _, _, result = _onboard(conn, stripe_client, catalog, start, billing_cycle="annual")
    assert result.subscription_status == "active" and result.api_access_enabled
    assert result.detail == "subscribed to pro (annual)"
    sub_id = str(result.subscription_id)
    assert _lookup_keys(stripe_client, sub_id) == {
        "pro_base_yearly": (start, _at(2027, 7, 9, 13, 17)),
        "pro_queries_overage_monthly": (start, _at(2026, 8, 9, 13, 17)),
    }
    sub = stripe_client.v1.subscriptions.retrieve(sub_id)
    assert sub.billing_mode.type == "flexible"
    assert present(sub.metadata)["billing_cycle"] == "annual"
    first = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.amount_paid == 99_000  # Pro's $990 a year, billed in advance


def test_annual_on_a_plan_without_a_yearly_fee_is_refused_before_anything_exists(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    tenant = f"an-{uuid.uuid4().hex[:8]}"
    request = lifecycle.OnboardRequest(
        tenant_id=tenant, name="Acme", email="ops@acme.test", plan="starter", billing_cycle="annual"
    )
    with pytest.raises(BillingConfigError) as refused, conn.transaction():
        lifecycle.onboard(conn, stripe_client, catalog, request)
    assert str(refused.value) == (
        "plan starter has no yearly base fee: annual billing needs base_yearly_cents "
        "in [plans.starter] of plans.toml"
    )
    found = stripe_client.v1.customers.search({"query": f"metadata['tenant_id']:'{tenant}'"})
    assert found.data == []
    row = conn.execute("SELECT 1 FROM tenants WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row is None


def test_mid_year_switch_monthly_to_annual_and_back_bills_what_the_preview_showed(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    c = stripe_client
    start = _at(2026, 7, 9, 13, 17)
    tenant, clock, result = _onboard(conn, c, catalog, start)
    sub_id, customer = str(result.subscription_id), str(result.customer_id)
    to_annual = _at(2026, 7, 20, 8, 41)
    advance(c, clock, to_annual)
    with conn.transaction():
        preview = lifecycle.preview_plan_change(
            conn, c, catalog, tenant, "pro", billing_cycle="annual"
        )
    # Unused month: (Aug 9 13:17 - Jul 20 08:41) = 1,744,560 of 2,678,400 s; 9,900 x that =
    # 6,448.31 -> a 6,448 credit; the year is billed in full at once: 99,000 - 6,448.
    assert sorted(amount for _, amount in preview.lines) == [-6448, 99_000]
    assert preview.amount_due == 92_552 and preview.due_when == "now"
    assert preview.describe().startswith("pro (monthly) -> pro (annual): 925.52 USD due now")
    assert "queries are still measured and billed every month" in preview.included_queries
    with conn.transaction():
        changed = lifecycle.change_plan(
            conn, c, catalog, tenant, "pro", preview.proration_date, billing_cycle="annual"
        )
    assert changed.detail.startswith("now on pro (annual)")
    assert _lookup_keys(c, sub_id) == {
        "pro_base_yearly": (to_annual, _at(2027, 7, 20, 8, 41)),
        "pro_queries_overage_monthly": (start, _at(2026, 8, 9, 13, 17)),
    }
    updates = [
        i
        for i in c.v1.invoices.list({"customer": customer, "limit": 20}).data
        if i.billing_reason == "subscription_update"
    ]
    assert [i.amount_paid for i in updates] == [92_552]
    # And back on Oct 2 21:05: unused year (Jul 20 2027 08:41 - Oct 2 2026 21:05) =
    # 25,097,760 of 31,536,000 s; 99,000 x that = 78,788.63 -> a 78,789 credit against a
    # new full month of 9,900: -68,889, nothing charged, the credit stays with the customer.
    to_monthly = _at(2026, 10, 2, 21, 5)
    advance(c, clock, to_monthly)
    with conn.transaction():
        back = lifecycle.preview_plan_change(
            conn, c, catalog, tenant, "pro", billing_cycle="monthly"
        )
    assert sorted(amount for _, amount in back.lines) == [-78_789, 9_900]
    with conn.transaction():
        lifecycle.change_plan(
            conn, c, catalog, tenant, "pro", back.proration_date, billing_cycle="monthly"
        )
    assert _lookup_keys(c, sub_id)["pro_base_monthly"] == (to_monthly, _at(2026, 11, 2, 21, 5))
    assert c.v1.customers.retrieve(customer).balance == -68_889
    with pytest.raises(lifecycle.LifecycleError, match="already on pro"), conn.transaction():
        lifecycle.preview_plan_change(conn, c, catalog, tenant, "pro", billing_cycle="monthly")


def test_annual_cancellation_at_period_end_keeps_the_paid_year(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    start = _at(2026, 3, 30, 19, 55)
    tenant, _, result = _onboard(conn, stripe_client, catalog, start, billing_cycle="annual")
    with conn.transaction():
        later = lifecycle.cancel(conn, stripe_client, catalog, tenant)
    assert later.detail == "cancels at the end of the paid year; usage is billed monthly until then"
    sub = stripe_client.v1.subscriptions.retrieve(str(result.subscription_id))
    assert sub.cancel_at == _at(2027, 3, 30, 19, 55)
    with conn.transaction():
        withdrawn = lifecycle.reactivate(conn, stripe_client, catalog, tenant)
    assert withdrawn.detail == "pending cancellation withdrawn"
    assert stripe_client.v1.subscriptions.retrieve(str(result.subscription_id)).cancel_at is None
