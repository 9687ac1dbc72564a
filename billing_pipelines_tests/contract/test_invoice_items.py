"""Invoice items created on a customer (docs.stripe.com/api/invoiceitems/create): "If no
invoice is specified, the item will be on the next invoice created for the customer", a
subscription's renewal included (docs.stripe.com/billing/invoices/subscription, "Adding
upcoming invoice items"); the same idempotency key never creates a second item."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from billing_pipelines_tests.contract.test_subscription_changes import (
    DAY,
    MAR15_0945,
    _customer,
    _prices,
    _renewal,
    _subscribe,
)
from billing_pipelines_tests.support import advance


def test_a_pending_item_goes_on_the_next_renewal_once(stripe_client: stripe.StripeClient) -> None:
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, MAR15_0945, "pm_card_visa")
    sub = _subscribe(c, cus, p, "starter")
    advance(c, clock, MAR15_0945 + 3 * DAY)
    params: Any = {
        "customer": cus,
        "amount": 123,
        "currency": "usd",
        "description": "Late usage for 2026-02-15..2026-03-15: 1,234 queries",
        "period": {"start": MAR15_0945 - 28 * DAY, "end": MAR15_0945},
        "metadata": {"kind": "late_usage"},
    }
    item = c.v1.invoice_items.create(params, {"idempotency_key": "late-1"})
    again = c.v1.invoice_items.create(params, {"idempotency_key": "late-1"})
    assert again.id == item.id and item.invoice is None and item.amount == 123
    pending = c.v1.invoice_items.list({"customer": cus, "pending": True}).data
    assert [i.id for i in pending] == [item.id]
    advance(c, clock, MAR15_0945 + 31 * DAY + 2 * 3600)
    renewal = _renewal(c, cus)
    mine = [ln for ln in renewal.lines.data if ln.description == params["description"]]
    assert [(ln.amount, ln.period.start, ln.period.end) for ln in mine] == [
        (123, MAR15_0945 - 28 * DAY, MAR15_0945)
    ]
    parent = renewal.parent
    assert parent is not None and parent.subscription_details is not None
    assert parent.subscription_details.subscription == sub.id  # the subscription's renewal
    assert renewal.amount_paid == 2900 + 123
    assert c.v1.invoice_items.retrieve(item.id).invoice == renewal.id
    assert c.v1.invoice_items.list({"customer": cus, "pending": True}).data == []


def test_an_item_needs_an_amount_and_currency_or_a_per_unit_price(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    p = _prices(c)
    _, cus = _customer(c, MAR15_0945, None)
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.invoice_items.create({"customer": cus, "currency": "usd"})
    with pytest.raises(stripe.InvalidRequestError):  # a graduated metered price
        c.v1.invoice_items.create({"customer": cus, "pricing": {"price": p["starter_usage"]}})
    item = c.v1.invoice_items.create(
        {"customer": cus, "pricing": {"price": p["starter_base"]}, "quantity": 2}
    )
    assert item.amount == 5800 and item.currency == "usd"
