"""The same lifecycle against real Stripe test mode, with a test clock (opt-in, see README).

Run: STRIPE_API_KEY=sk_test_... make test PYTEST_ARGS="--stripe-live -k stripe_test_mode".
Everything it creates lives in the test-mode account on its own test clock, which the test
deletes at the end (Stripe deletes the clock's customers and subscriptions with it).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import stripe
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as stripe_catalog
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.tax.location import TaxLocationError, tax_location

pytestmark = pytest.mark.stripe_live

DAY = 86_400


@pytest.fixture
def live_client() -> stripe.StripeClient:
    return stripe_api.make_client(os.environ["STRIPE_API_KEY"], max_network_retries=3)


@pytest.fixture
def clock(live_client: stripe.StripeClient) -> Iterator[str]:
    start = int(datetime.now(UTC).timestamp())
    created = live_client.v1.test_helpers.test_clocks.create(
        {"frozen_time": start, "name": f"billing_pipelines {uuid.uuid4().hex[:6]}"}
    )
    yield str(created.id)
    live_client.v1.test_helpers.test_clocks.delete(str(created.id))


def _advance(client: stripe.StripeClient, clock_id: str, to: int) -> None:
    client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": to})
    deadline = time.monotonic() + 300
    while client.v1.test_helpers.test_clocks.retrieve(clock_id).status != "ready":
        assert time.monotonic() < deadline, "the test clock did not finish advancing"
        time.sleep(2)


def test_onboard_report_and_invoice_in_stripe_test_mode(
    live_client: stripe.StripeClient, clock: str, fresh_database_url: str
) -> None:
    lifecycle_month(live_client, clock, fresh_database_url, _advance)


def lifecycle_month(
    client: stripe.StripeClient, clock: str, database_url: str, advance: Any
) -> None:
    """Onboard on a clock, report 125,000 queries, renew: the invoice bills $20.00 overage."""
    live_client = client
    _advance = advance
    catalog = load_catalog()
    stripe_catalog.sync_catalog(live_client, catalog)
    tenant = f"live-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        with conn.transaction():
            onboarded = lifecycle.onboard(
                conn,
                live_client,
                catalog,
                lifecycle.OnboardRequest(
                    tenant_id=tenant,
                    name="Live test",
                    email="live@example.com",
                    plan="pro",
                    payment_method="pm_card_visa",
                    trial=False,
                    test_clock=clock,
                ),
            )
        assert onboarded.subscription_status == "active"
        sub: Any = live_client.v1.subscriptions.retrieve(str(onboarded.subscription_id))
        period_end = int(sub["items"].data[0].current_period_end)
        period_start = int(sub["items"].data[0].current_period_start)
        # Usage can only be reported up to the clock's "now": let two days pass first.
        _advance(live_client, clock, period_start + 2 * DAY)
        live_client.v1.billing.meter_events.create(
            {
                "event_name": catalog.meters["queries"].event_name,
                "payload": {"stripe_customer_id": str(onboarded.customer_id), "value": "125000"},
                "identifier": f"{tenant}-queries-1",
                "timestamp": period_start + DAY,
            }
        )
        _advance(live_client, clock, period_end + 2 * 3600)
        invoices = live_client.v1.invoices.list(
            {"customer": str(onboarded.customer_id), "limit": 10}
        )
        renewal = [i for i in invoices.data if i.billing_reason == "subscription_cycle"]
        assert renewal, "no renewal invoice after the period ended"
        metered = [line for line in renewal[0].lines.data if line.amount == 2000]
        assert metered, "125,000 queries on pro should bill 25,000 x $0.0008 = $20.00"


def test_annual_tenant_in_stripe_test_mode(
    live_client: stripe.StripeClient, clock: str, fresh_database_url: str
) -> None:
    annual_month(live_client, clock, fresh_database_url, _advance)


def annual_month(client: stripe.StripeClient, clock: str, database_url: str, advance: Any) -> None:
    """An annual Pro tenant: the yearly fee on the first invoice; the first monthly renewal
    bills 125,000 queries ($20.00 overage) on its own, without the yearly fee (a mixed interval
    subscription renews each item on its own period: docs.stripe.com/billing/subscriptions/
    mixed-interval)."""
    catalog = load_catalog()
    stripe_catalog.sync_catalog(client, catalog)
    tenant = f"live-annual-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        with conn.transaction():
            onboarded = lifecycle.onboard(
                conn,
                client,
                catalog,
                lifecycle.OnboardRequest(
                    tenant_id=tenant,
                    name="Live annual test",
                    email="live@example.com",
                    plan="pro",
                    payment_method="pm_card_visa",
                    trial=False,
                    test_clock=clock,
                    billing_cycle="annual",
                ),
            )
    assert onboarded.subscription_status == "active"
    sub: Any = client.v1.subscriptions.retrieve(str(onboarded.subscription_id))
    assert sub.billing_mode.type == "flexible"
    items = {i.price.recurring.interval: i for i in sub["items"].data}
    assert set(items) == {"year", "month"}
    year, month = items["year"], items["month"]
    assert year.price.lookup_key == "pro_base_yearly"
    assert year.current_period_end - year.current_period_start >= 365 * DAY
    assert month.price.recurring.usage_type == "metered"
    first = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.amount_paid == 99_000, "the first invoice bills Pro's $990.00 year"
    start, end = int(month.current_period_start), int(month.current_period_end)
    advance(client, clock, start + 2 * DAY)
    client.v1.billing.meter_events.create(
        {
            "event_name": catalog.meters["queries"].event_name,
            "payload": {"stripe_customer_id": str(onboarded.customer_id), "value": "125000"},
            "identifier": f"{tenant}-queries-1",
            "timestamp": start + DAY,
        }
    )
    advance(client, clock, end + 2 * 3600)
    invoices = client.v1.invoices.list({"customer": str(onboarded.customer_id), "limit": 10})
    renewal = [i for i in invoices.data if i.billing_reason == "subscription_cycle"]
    assert len(renewal) == 1, "one monthly renewal invoice"
    amounts = sorted(line.amount for line in renewal[0].lines.data)
    assert amounts == [2000], "usage alone: 25,000 x $0.0008 = $20.00, no yearly fee"


def test_taxed_tenant_in_stripe_test_mode(
    live_client: stripe.StripeClient, clock: str, fresh_database_url: str
) -> None:
    """Needs Stripe Tax set up on the test-mode account (an origin address in its tax settings):
    without it Stripe refuses automatic tax, and this test says so."""
    taxed_month(live_client, clock, fresh_database_url, _advance)


def _invoice_adds_up(invoice: Any) -> int:
    """Stripe's own fields agree: total = total before tax + every line's tax; returns the tax."""
    tax = sum(int(t.amount) for t in invoice.total_taxes or [])
    line_tax = sum(int(t.amount) for line in invoice.lines.data for t in line.taxes or [])
    assert tax == line_tax, (tax, line_tax)
    assert invoice.total == invoice.total_excluding_tax + tax
    return tax


def taxed_month(client: stripe.StripeClient, clock: str, database_url: str, advance: Any) -> None:
    """With automatic tax on: a tenant without a usable location is refused before anything is
    created; a US tenant is subscribed with automatic tax, and its invoices (the first one and
    the renewal with $20.00 overage) carry Stripe's tax on top of the pre-tax lines.

    Real Stripe's rate depends on the account's registrations, so the amounts are checked for
    consistency (Stripe's own fields add up, the pre-tax lines are the catalog's), not a rate.
    """
    catalog = replace(load_catalog(), automatic_tax=True)
    stripe_catalog.sync_catalog(client, catalog)
    tenant = f"live-tax-{uuid.uuid4().hex[:8]}"

    def request(**location: Any) -> lifecycle.OnboardRequest:
        return lifecycle.OnboardRequest(
            tenant_id=tenant,
            name="Live tax test",
            email="live-tax@example.com",
            plan="pro",
            payment_method="pm_card_visa",
            trial=False,
            test_clock=clock,
            tax_location=tax_location(**location),
        )

    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        with pytest.raises(TaxLocationError, match="5-digit US postal code"):
            with conn.transaction():
                lifecycle.onboard(conn, client, catalog, request(country="US", state="CA"))
        assert conn.execute("SELECT count(*) AS n FROM tenants").fetchone() == {"n": 0}
        with conn.transaction():
            onboarded = lifecycle.onboard(
                conn, client, catalog, request(country="US", postal_code="94103", state="CA")
            )
    assert onboarded.subscription_status == "active"
    sub: Any = client.v1.subscriptions.retrieve(str(onboarded.subscription_id))
    assert sub.automatic_tax.enabled is True
    first = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.total_excluding_tax == catalog.plan("pro").base_monthly_cents
    _invoice_adds_up(first)
    period_start = int(sub["items"].data[0].current_period_start)
    period_end = int(sub["items"].data[0].current_period_end)
    advance(client, clock, period_start + 2 * DAY)
    client.v1.billing.meter_events.create(
        {
            "event_name": catalog.meters["queries"].event_name,
            "payload": {"stripe_customer_id": str(onboarded.customer_id), "value": "125000"},
            "identifier": f"{tenant}-queries-1",
            "timestamp": period_start + DAY,
        }
    )
    advance(client, clock, period_end + 2 * 3600)
    invoices = client.v1.invoices.list({"customer": str(onboarded.customer_id), "limit": 10})
    renewal = [i for i in invoices.data if i.billing_reason == "subscription_cycle"]
    assert renewal, "no renewal invoice after the period ended"
    assert sorted(line.amount for line in renewal[0].lines.data) == [2000, 9900]
    _invoice_adds_up(renewal[0])
