"""Stripe Tax in the sandbox, as far as the tests need it (the pages are cited in
sandbox/billing_sandbox/stripe/tax.py):

- docs.stripe.com/tax/customer-locations and docs.stripe.com/tax/invoicing ("Set up the
  customer"): a country outside the US; a 5-digit postal code in the US; a province or postal
  code in Canada. `tax[validate_location]=immediately` refuses anything less with
  `customer_tax_location_invalid` (docs.stripe.com/error-codes) and creates nothing.
- docs.stripe.com/billing/taxes/collect-taxes: `automatic_tax[enabled]=true` on a subscription.
  The docs do not say that creating one for an unlocatable customer is refused; the sandbox
  refuses it (the stricter choice), and nothing is created.
- docs.stripe.com/api/invoices/object: line `taxes`, invoice `total_taxes` (the aggregate of
  the lines), `subtotal`, `total_excluding_tax`, `total`.

The rates are the sandbox's TEST DATA (US 5 %, CA 12 %, DE 20 %: made up, not real rates).
Expected amounts are computed here with Decimal: each line's tax rounded to the cent, half away
from zero (the sandbox's documented choice where Stripe's pages are silent)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
import stripe

from billing_pipelines_tests.contract.test_subscription_changes import (
    DAY,
    MAR15_0945,
    _prices,
    _renewal,
    _subscribe,
    _use,
)
from billing_pipelines_tests.support import advance


def _cents(amount: int, percent: str) -> int:
    exact = Decimal(amount) * Decimal(percent) / Decimal(100)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _taxed_customer(
    c: stripe.StripeClient, at: int, address: dict[str, str], **extra: Any
) -> tuple[str, str]:
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": at})
    params: Any = {
        "email": "ops@tenant.io",
        "test_clock": clock.id,
        "address": address,
        "tax": {"validate_location": "immediately"},
        **extra,
    }
    cus = c.v1.customers.create(params)
    attached = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": attached.id}})
    return clock.id, cus.id


@pytest.mark.parametrize(
    "address",
    [
        {},
        {"postal_code": "94103"},
        {"country": "US"},
        {"country": "US", "state": "CA"},
        {"country": "US", "postal_code": "941"},
        {"country": "CA"},
        {"country": "CA", "city": "Ottawa"},
        {"country": "ZZ"},  # two letters, but no ISO 3166-1 country
    ],
)
def test_validate_location_immediately_refuses_what_stripe_tax_cannot_locate(
    stripe_client: stripe.StripeClient, address: dict[str, str]
) -> None:
    c = stripe_client
    before = len(c.v1.customers.list({"limit": 100}).data)
    params: Any = {"email": "x@tenant.io", "tax": {"validate_location": "immediately"}}
    if address:
        params["address"] = address
    with pytest.raises(stripe.InvalidRequestError) as refused:
        c.v1.customers.create(params)
    assert refused.value.http_status == 400
    assert refused.value.code == "customer_tax_location_invalid"
    assert len(c.v1.customers.list({"limit": 100}).data) == before  # nothing created
    # Without validation (the default, deferred) the same customer is created.
    params.pop("tax")
    assert c.v1.customers.create(params).id.startswith("cus_")


@pytest.mark.parametrize(
    "address",
    [
        {"country": "US", "postal_code": "94103"},
        {"country": "US", "postal_code": "97712-4918", "state": "OR"},
        {"country": "CA", "state": "ON"},
        {"country": "CA", "postal_code": "K1A 0B1"},
        {"country": "DE"},
    ],
)
def test_validate_location_immediately_accepts_a_usable_location(
    stripe_client: stripe.StripeClient, address: dict[str, str]
) -> None:
    params: Any = {"address": address, "tax": {"validate_location": "immediately"}}
    cus = stripe_client.v1.customers.create(params)
    assert cus.address is not None and cus.address.country == address["country"]
    assert cus.address.postal_code == address.get("postal_code")


def test_an_update_to_an_unusable_location_is_refused_and_changes_nothing(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    good: Any = {"address": {"country": "US", "postal_code": "94103"}}
    cus = c.v1.customers.create(good)
    bad: Any = {"address": {"country": "US"}, "tax": {"validate_location": "immediately"}}
    with pytest.raises(stripe.InvalidRequestError) as refused:
        c.v1.customers.update(cus.id, bad)
    assert refused.value.code == "customer_tax_location_invalid"
    assert c.v1.customers.retrieve(cus.id).address.postal_code == "94103"  # type: ignore[union-attr]
    moved: Any = {
        "address": {"country": "CA", "state": "QC"},
        "tax": {"validate_location": "immediately"},
    }
    updated = c.v1.customers.update(cus.id, moved)
    assert updated.address is not None and (updated.address.country, updated.address.state) == (
        "CA",
        "QC",
    )


def test_automatic_tax_subscription_for_an_unlocatable_customer_is_refused(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    p = _prices(c)
    cus = c.v1.customers.create({"email": "nowhere@tenant.io"})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _subscribe(c, cus.id, p, "starter", automatic_tax={"enabled": True})
    assert refused.value.code == "customer_tax_location_invalid"
    listed = c.v1.subscriptions.list({"customer": cus.id, "status": "all"}).data
    assert listed == []
    assert c.v1.invoices.list({"customer": cus.id}).data == []
    # The same customer without automatic tax subscribes untaxed.
    sub = _subscribe(c, cus.id, p, "starter")
    assert sub.automatic_tax.enabled is False


def test_a_taxed_subscription_invoices_tax_on_each_line_and_in_the_totals(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    p = _prices(c)
    clock, cus = _taxed_customer(c, MAR15_0945, {"country": "US", "postal_code": "94103"})
    sub = _subscribe(c, cus, p, "starter", automatic_tax={"enabled": True})
    assert sub.automatic_tax.enabled is True
    first = c.v1.invoices.retrieve(str(sub.latest_invoice))
    base_tax = _cents(2900, "5")  # 145
    assert first.automatic_tax.enabled is True and first.automatic_tax.status == "complete"
    assert (first.subtotal, first.total_excluding_tax, first.total) == (2900, 2900, 2900 + base_tax)
    assert first.amount_paid == 2900 + base_tax and first.status == "paid"
    # 23,500 queries: 13,500 over starter's 10,000 at $0.001 = 1,350 cents; 5 % of it is 67.5
    # cents, which rounds half away from zero to 68.
    advance(c, clock, MAR15_0945 + 3 * DAY)
    _use(c, cus, MAR15_0945 + 2 * DAY, 23_500)
    advance(c, clock, MAR15_0945 + 31 * DAY + 2 * 3600)
    renewal = _renewal(c, cus)
    by_amount = {ln.amount: ln for ln in renewal.lines.data}
    assert sorted(by_amount) == [1350, 2900]
    for amount, line in by_amount.items():
        assert line.taxes is not None and len(line.taxes) == 1
        tax = line.taxes[0]
        assert (tax.amount, tax.tax_behavior, tax.taxability_reason, tax.taxable_amount) == (
            _cents(amount, "5"),
            "exclusive",
            "standard_rated",
            amount,
        )
        assert tax.type == "tax_rate_details" and tax.tax_rate_details is not None
    tax_total = _cents(1350, "5") + _cents(2900, "5")
    assert tax_total == 68 + 145
    assert renewal.subtotal == renewal.total_excluding_tax == 1350 + 2900
    assert renewal.total == 1350 + 2900 + tax_total and renewal.amount_due == renewal.total
    assert renewal.total_taxes is not None
    assert sum(t.amount for t in renewal.total_taxes) == tax_total
    assert sum(t.taxable_amount or 0 for t in renewal.total_taxes) == 1350 + 2900


@pytest.mark.parametrize(
    ("address", "tax_ids", "percent", "reason"),
    [
        ({"country": "CA", "state": "ON"}, [], "12", "standard_rated"),
        ({"country": "DE"}, [], "20", "standard_rated"),
        ({"country": "DE"}, [{"type": "eu_vat", "value": "DE123456789"}], "0", "reverse_charge"),
        ({"country": "GB"}, [], "0", "not_collecting"),
    ],
)
def test_rates_by_location_reverse_charge_and_not_collecting(
    stripe_client: stripe.StripeClient,
    address: dict[str, str],
    tax_ids: list[dict[str, str]],
    percent: str,
    reason: str,
) -> None:
    c = stripe_client
    p = _prices(c)
    extra = {"tax_id_data": tax_ids} if tax_ids else {}
    _, cus = _taxed_customer(c, MAR15_0945, address, **extra)
    assert [(t.type, t.value) for t in c.v1.customers.tax_ids.list(cus).data] == [
        (t["type"], t["value"]) for t in tax_ids
    ]
    sub = _subscribe(c, cus, p, "pro", automatic_tax={"enabled": True})
    first = c.v1.invoices.retrieve(str(sub.latest_invoice))
    line = first.lines.data[0]
    assert line.amount == 9900 and line.taxes is not None
    assert [(t.amount, t.taxability_reason) for t in line.taxes] == [
        (_cents(9900, percent), reason)
    ]
    assert first.total == 9900 + _cents(9900, percent)


def test_an_untaxed_subscription_has_no_tax_fields_filled(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    p = _prices(c)
    _, cus = _taxed_customer(c, MAR15_0945, {"country": "US", "postal_code": "94103"})
    sub = _subscribe(c, cus, p, "starter")
    first = c.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.automatic_tax.enabled is False and first.total_taxes == []
    assert first.total == first.total_excluding_tax == first.subtotal == 2900
    assert all(ln.taxes == [] for ln in first.lines.data)
