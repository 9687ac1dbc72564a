"""A plan change for a taxed tenant: the preview, the operator's summary and the `plan_changed`
email state the tax Stripe will add, and the invoice the change produces carries exactly that tax.

Expected amounts are worked out here from plans.toml's prices, the seconds left in the period and
the sandbox's TEST DATA rate for the US (5 %), rounded per line half away from zero."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
import stripe
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as stripe_catalog
from billing_pipelines.lib.tax.location import tax_location
from billing_pipelines_tests.support import advance

MAR15_0945 = 1773567900  # 2026-03-15T09:45:00Z: the period ends 2026-04-15T09:45:00Z
PERIOD = 31 * 86_400
US_RATE = Decimal("0.05")


@pytest.fixture
def taxed_catalog(stripe_client: stripe.StripeClient) -> Catalog:
    loaded = replace(load_catalog(), automatic_tax=True)
    stripe_catalog.sync_catalog(stripe_client, loaded)
    return loaded


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as c:
        yield c


def _onboard_on_starter(
    conn: Any, client: stripe.StripeClient, catalog: Catalog, **kw: Any
) -> tuple[str, str, lifecycle.LifecycleResult]:
    """A Starter tenant with a card on its own clock at MAR15_0945."""
    tenant = f"tx-{uuid.uuid4().hex[:8]}"
    clock = str(client.v1.test_helpers.test_clocks.create({"frozen_time": MAR15_0945}).id)
    request = lifecycle.OnboardRequest(
        tenant_id=tenant,
        name="Acme",
        email="ops@acme.test",
        plan="starter",
        payment_method="pm_card_visa",
        trial=False,
        test_clock=clock,
        **kw,
    )
    with conn.transaction():
        return tenant, clock, lifecycle.onboard(conn, client, catalog, request)


def _cents(value: Decimal) -> int:
    # ROUND_HALF_UP rounds half away from zero, negative credits included.
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def test_a_taxed_plan_change_states_its_tax_and_the_invoice_carries_it(
    conn: Any, stripe_client: stripe.StripeClient, taxed_catalog: Catalog
) -> None:
    c = stripe_client
    location = tax_location(country="us", postal_code="94103", state="CA")
    tenant, clock, onboarded = _onboard_on_starter(conn, c, taxed_catalog, tax_location=location)
    customer = str(onboarded.customer_id)
    change = MAR15_0945 + 9 * 86_400 + 5 * 3_600 + 13 * 60  # Mar 24 14:58
    advance(c, clock, change)
    with conn.transaction():
        preview = lifecycle.preview_plan_change(conn, c, taxed_catalog, tenant, "pro")
    left = Decimal(MAR15_0945 + PERIOD - preview.proration_date) / PERIOD
    credit = -_cents(taxed_catalog.plan("starter").base_monthly_cents * left)
    charge = _cents(taxed_catalog.plan("pro").base_monthly_cents * left)
    base_lines = sorted(amount for _, amount in preview.lines if amount)
    assert base_lines == [credit, charge]
    subtotal = credit + charge
    tax = sum(_cents(amount * US_RATE) for amount in base_lines)
    assert (preview.subtotal, preview.tax, preview.total) == (subtotal, tax, subtotal + tax)
    sentence = (
        f"The invoice total of {_dollars(subtotal + tax)} includes {_dollars(tax)} tax on "
        f"{_dollars(subtotal)} before tax."
    )
    assert sentence in preview.describe()
    with conn.transaction():
        lifecycle.change_plan(
            conn, c, taxed_catalog, tenant, "pro", preview.proration_date, preview=preview
        )
    invoice = next(
        i
        for i in c.v1.invoices.list({"customer": customer}).data
        if i.billing_reason == "subscription_update"
    )
    assert (invoice.total_excluding_tax, invoice.total) == (subtotal, subtotal + tax)
    assert sum(t.amount for t in invoice.total_taxes or []) == tax
    body = conn.execute(
        "SELECT body FROM notification_outbox WHERE tenant_id = %s AND template = 'plan_changed'",
        (tenant,),
    ).fetchone()["body"]
    assert sentence in " ".join(body.split())


def test_an_untaxed_plan_change_says_nothing_about_tax(
    conn: Any, stripe_client: stripe.StripeClient
) -> None:
    c = stripe_client
    catalog = load_catalog()
    stripe_catalog.sync_catalog(c, catalog)
    tenant, clock, _ = _onboard_on_starter(conn, c, catalog)
    advance(c, clock, MAR15_0945 + 3 * 86_400 + 7)
    with conn.transaction():
        preview = lifecycle.preview_plan_change(conn, c, catalog, tenant, "pro")
    assert (preview.tax, preview.automatic_tax, preview.tax_note) == (0, False, "")
    assert "tax" not in preview.describe()
