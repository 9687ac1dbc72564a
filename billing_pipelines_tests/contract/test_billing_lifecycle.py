"""Subscriptions, invoices and payments driven by test clocks, through the SDK over HTTP."""

from __future__ import annotations

from decimal import Decimal

import pytest
import stripe

from billing_pipelines_tests.support import advance, expanded, present

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400
FEB1 = T0 + 31 * DAY


def _catalog(c: stripe.StripeClient) -> dict[str, str]:
    prod = c.v1.products.create({"name": "Pro"})
    meter = c.v1.billing.meters.create(
        {
            "display_name": "Queries",
            "event_name": "queries",
            "default_aggregation": {"formula": "sum"},
            "event_time_window": "day",
        }
    )
    base = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 9900,
            "recurring": {"interval": "month"},
            "lookup_key": "pro_base",
        }
    )
    starter = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 2900,
            "recurring": {"interval": "month"},
            "lookup_key": "starter_base",
        }
    )
    usage = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "lookup_key": "pro_queries",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "tiers": [
                {"up_to": 100000, "unit_amount": 0},
                {"up_to": "inf", "unit_amount_decimal": Decimal("0.08")},
            ],
        }
    )
    return {"base": base.id, "usage": usage.id, "starter": starter.id, "meter": meter.id}


def _customer(c: stripe.StripeClient, clock: str, pm: str | None) -> stripe.Customer:
    cus = c.v1.customers.create(
        {"email": "ops@tenant.io", "test_clock": clock, "metadata": {"tenant_id": "t1"}}
    )
    if pm:
        attached = c.v1.payment_methods.attach(pm, {"customer": cus.id})
        c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": attached.id}})
    return cus


def _types(c: stripe.StripeClient) -> list[str]:
    return [str(e.type) for e in c.v1.events.list({"limit": 100}).auto_paging_iter()][::-1]


def test_graduated_tiers_bill_overage_at_period_end(stripe_client: stripe.StripeClient):
    c = stripe_client
    cat = _catalog(c)
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = _customer(c, clock.id, "pm_card_visa")
    sub = c.v1.subscriptions.create(
        {"customer": cus.id, "items": [{"price": cat["base"]}, {"price": cat["usage"]}]}
    )
    assert sub.status == "active"
    item = sub["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (T0, FEB1)
    assert "current_period_end" not in sub  # moved to the items at this API version
    advance(c, clock.id, T0 + 30 * DAY)
    c.v1.billing.meter_events.create(
        {
            "event_name": "queries",
            "timestamp": T0 + 29 * DAY,
            "payload": {"stripe_customer_id": cus.id, "value": "125000"},
        }
    )
    advance(c, clock.id, FEB1 + 60)  # period ended: draft invoice, usage still accepted
    draft = c.v1.invoices.list({"customer": cus.id, "status": "draft"}).data[0]
    assert draft.automatically_finalizes_at == FEB1 + 3600
    assert present(present(draft.parent).subscription_details).subscription == sub.id
    c.v1.billing.meter_events.create(
        {  # late event for Jan 31 inside the grace hour
            "event_name": "queries",
            "timestamp": FEB1 - 60,
            "identifier": "late",
            "payload": {"stripe_customer_id": cus.id, "value": "0"},
        }
    )
    advance(c, clock.id, FEB1 + 2 * 3600)
    inv = c.v1.invoices.retrieve(draft.id)
    assert inv.status == "paid"
    amounts = sorted(line.amount for line in inv.lines.data)
    # Jan 31 window now holds "0" (newest replaces), Jan 30 holds 125000: 25,000 over = $20
    assert amounts == [2000, 9900]
    assert inv.amount_paid == 11900 and inv.attempt_count == 1
    assert inv.status_transitions.finalized_at == FEB1 + 3600
    assert inv.hosted_invoice_url and inv.invoice_pdf and inv.number


def test_failing_card_retries_then_recovers_with_new_default_card(
    stripe_client: stripe.StripeClient,
):
    c = stripe_client
    cat = _catalog(c)
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = _customer(c, clock.id, None)
    bad = c.v1.payment_methods.create(
        {"type": "card", "card": {"number": "4000000000000341", "exp_month": 12, "exp_year": 2034}}
    )
    c.v1.payment_methods.attach(bad.id, {"customer": cus.id})
    sub = c.v1.subscriptions.create(
        {
            "customer": cus.id,
            "items": [{"price": cat["base"]}],
            "trial_period_days": 14,
            "default_payment_method": bad.id,
        }
    )
    assert sub.status == "trialing"
    advance(c, clock.id, T0 + 14 * DAY + 2 * 3600)  # trial ends, invoice finalizes, charge fails
    sub = c.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "past_due"
    inv = c.v1.invoices.retrieve(sub.latest_invoice)  # type: ignore[arg-type]
    assert inv.status == "open" and inv.attempt_count == 1 and inv.attempted
    first_fail = T0 + 14 * DAY + 3600
    assert inv.next_payment_attempt == first_fail + 3 * DAY
    advance(c, clock.id, first_fail + 3 * DAY + 60)  # retry 1 fails
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.attempt_count == 2 and inv.next_payment_attempt == first_fail + 5 * DAY
    good = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": good.id}})
    c.v1.subscriptions.update(sub.id, {"default_payment_method": ""})
    advance(c, clock.id, first_fail + 5 * DAY + 60)  # retry 2 uses the new default card
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.status == "paid" and inv.attempt_count == 3 and inv.next_payment_attempt is None
    assert c.v1.subscriptions.retrieve(sub.id).status == "active"
    types = _types(c)
    assert types.count("invoice.payment_failed") == 2
    assert "customer.subscription.trial_will_end" in types
    last_paid = len(types) - 1 - types[::-1].index("invoice.paid")
    assert types.index("invoice.payment_failed") < last_paid
    upd = c.v1.events.list({"type": "customer.subscription.updated"}).data[0]
    assert upd.data.object.status == "active"
    assert present(upd.data.previous_attributes)["status"] == "past_due"


def test_retries_exhausted_make_subscription_unpaid(stripe_client: stripe.StripeClient):
    c = stripe_client
    cat = _catalog(c)
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = _customer(c, clock.id, "pm_card_visa")
    sub = c.v1.subscriptions.create({"customer": cus.id, "items": [{"price": cat["base"]}]})
    bad = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": bad.id}})
    advance(c, clock.id, FEB1 + 10 * DAY)
    s = c.v1.subscriptions.retrieve(sub.id)
    assert s.status == "unpaid"
    inv = c.v1.invoices.retrieve(s.latest_invoice)  # type: ignore[arg-type]
    assert inv.attempt_count == 4 and inv.next_payment_attempt is None and inv.status == "open"
    with pytest.raises(stripe.CardError):
        c.v1.invoices.pay(inv.id)
    paid = c.v1.invoices.pay(
        inv.id,
        {
            "payment_method": c.v1.payment_methods.attach(
                "pm_card_mastercard", {"customer": cus.id}
            ).id
        },
    )
    assert paid.status == "paid"
    assert c.v1.subscriptions.retrieve(sub.id).status == "active"


@pytest.mark.parametrize(
    "behavior,status", [("cancel", "canceled"), ("pause", "paused"), ("create_invoice", "past_due")]
)
def test_trial_ends_without_payment_method(
    stripe_client: stripe.StripeClient, behavior: str, status: str
):
    c = stripe_client
    cat = _catalog(c)
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = _customer(c, clock.id, None)
    sub = c.v1.subscriptions.create(
        {
            "customer": cus.id,
            "items": [{"price": cat["base"]}],
            "trial_period_days": 14,
            "trial_settings": {"end_behavior": {"missing_payment_method": behavior}},
        }
    )
    assert sub.status == "trialing" and sub.trial_end == T0 + 14 * DAY
    advance(c, clock.id, T0 + 12 * DAY)
    assert c.v1.events.list({"type": "customer.subscription.trial_will_end"}).data
    advance(c, clock.id, T0 + 14 * DAY + 2 * 3600)
    assert c.v1.subscriptions.retrieve(sub.id).status == status


def test_first_payment_behaviors(stripe_client: stripe.StripeClient):
    c = stripe_client
    cat = _catalog(c)
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = _customer(c, clock.id, "pm_card_chargeCustomerFail")
    with pytest.raises(stripe.CardError):
        c.v1.subscriptions.create(
            {
                "customer": cus.id,
                "items": [{"price": cat["base"]}],
                "payment_behavior": "error_if_incomplete",
            }
        )
    assert not c.v1.subscriptions.list({"customer": cus.id, "status": "all"}).data
    s = c.v1.subscriptions.create(
        {
            "customer": cus.id,
            "items": [{"price": cat["base"]}],
            "payment_behavior": "allow_incomplete",
            "expand": ["latest_invoice"],
        }
    )
    assert s.status == "incomplete" and expanded(s.latest_invoice).attempt_count == 1
    d = c.v1.subscriptions.create(
        {
            "customer": cus.id,
            "items": [{"price": cat["base"]}],
            "payment_behavior": "default_incomplete",
            "expand": ["latest_invoice"],
        }
    )
    assert d.status == "incomplete" and expanded(d.latest_invoice).attempt_count == 0
    advance(c, clock.id, T0 + DAY)
    assert c.v1.subscriptions.retrieve(d.id).status == "incomplete_expired"


def _is_proration(line: stripe.InvoiceLineItem) -> bool:
    parent = present(line.parent)
    if parent.subscription_item_details is not None:
        return parent.subscription_item_details.proration
    return present(parent.invoice_item_details).proration


def test_proration_preview_equals_applied_proration(stripe_client: stripe.StripeClient):
    c = stripe_client
    cat = _catalog(c)
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = _customer(c, clock.id, "pm_card_visa")
    sub = c.v1.subscriptions.create({"customer": cus.id, "items": [{"price": cat["starter"]}]})
    advance(c, clock.id, T0 + 10 * DAY)
    item = sub["items"].data[0].id
    pdate = T0 + 10 * DAY
    preview = c.v1.invoices.create_preview(
        {
            "customer": cus.id,
            "subscription": sub.id,
            "subscription_details": {
                "items": [{"id": item, "price": cat["base"]}],
                "proration_date": pdate,
            },
        }
    )
    pro = [ln.amount for ln in preview.lines.data if _is_proration(ln)]
    expected = round(9900 * 21 / 31) - round(2900 * 21 / 31)
    assert sum(pro) == expected
    upd = c.v1.subscriptions.update(
        sub.id,
        {
            "items": [{"id": item, "price": cat["base"]}],
            "proration_date": pdate,
            "proration_behavior": "create_prorations",
        },
    )
    assert upd["items"].data[0].id == item and upd["items"].data[0].price.id == cat["base"]
    pending = c.v1.invoice_items.list({"customer": cus.id, "pending": True}).data
    assert sorted(ii.amount for ii in pending) == sorted(pro)
    advance(c, clock.id, FEB1 + 2 * 3600)
    inv = c.v1.invoices.list({"customer": cus.id, "subscription": sub.id}).data[0]
    assert inv.amount_paid == 9900 + expected


def test_always_invoice_and_cancel(stripe_client: stripe.StripeClient):
    c = stripe_client
    cat = _catalog(c)
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = _customer(c, clock.id, "pm_card_visa")
    sub = c.v1.subscriptions.create({"customer": cus.id, "items": [{"price": cat["starter"]}]})
    upd = c.v1.subscriptions.update(
        sub.id,
        {
            "items": [{"id": sub["items"].data[0].id, "price": cat["base"]}],
            "proration_behavior": "always_invoice",
            "expand": ["latest_invoice"],
        },
    )
    invoice = expanded(upd.latest_invoice)
    assert invoice.billing_reason == "subscription_update"
    assert invoice.status == "paid" and invoice.amount_paid == 9900 - 2900
    s = c.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    assert s.cancel_at_period_end and s.status == "active"
    advance(c, clock.id, FEB1 + 60)
    s = c.v1.subscriptions.retrieve(sub.id)
    assert s.status == "canceled" and s.ended_at == FEB1
    assert c.v1.events.list({"type": "customer.subscription.deleted"}).data
    other = c.v1.subscriptions.create({"customer": cus.id, "items": [{"price": cat["base"]}]})
    gone = c.v1.subscriptions.cancel(other.id)
    assert gone.status == "canceled"
    assert (
        c.v1.subscriptions.search({"query": "status:'canceled' AND metadata['x']:'y'"}).data == []
    )
