"""Plan changes, cancellation, resume and retries as Stripe documents them, on odd-instant clocks.

Every expected amount below is worked out by hand from the prices' tiers and the usage sent;
none is computed by sandbox code. Pages: billing mode (docs.stripe.com/billing/subscriptions/
billing-mode/compare), mid-cycle price changes (docs.stripe.com/billing/subscriptions/
usage-based/manage-billing-setup), cancellation (docs.stripe.com/api/subscriptions/cancel),
resume (docs.stripe.com/changelog/dahlia/2026-05-27/pause-subscriptions), retries
(docs.stripe.com/billing/revenue-recovery/smart-retries).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import stripe
from billing_sandbox.stripe.server import SandboxHandle

from billing_pipelines_tests.support import advance, present

DAY = 86400
HOUR = 3600
# 2026-01-31T14:30:00Z: a month-end anchor at an afternoon instant; the next period ends on the
# last day of February at the same time of day (28 days later), then on March 31.
JAN31_1430 = 1769869800
FEB28_1430 = JAN31_1430 + 28 * DAY
# 2026-03-15T09:45:00Z; its period ends 2026-04-15T09:45:00Z, 31 days later.
MAR15_0945 = 1773567900
APR15_0945 = MAR15_0945 + 31 * DAY


def _prices(c: stripe.StripeClient) -> dict[str, str]:
    """Starter ($29, 10,000 queries free, then $0.001) and pro ($99, 100,000, then $0.0008)."""
    prod = c.v1.products.create({"name": "RAG API"})
    meter = c.v1.billing.meters.create(
        {
            "display_name": "Queries",
            "event_name": "queries",
            "default_aggregation": {"formula": "sum"},
        }
    )
    out = {"meter": meter.id}
    for plan, base, included, per_query in (
        ("starter", 2900, 10_000, "0.1"),
        ("pro", 9900, 100_000, "0.08"),
    ):
        out[f"{plan}_base"] = c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount": base,
                "recurring": {"interval": "month"},
            }
        ).id
        out[f"{plan}_usage"] = c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
                "tiers": [
                    {"up_to": included, "unit_amount": 0},
                    {"up_to": "inf", "unit_amount_decimal": Decimal(per_query)},
                ],
            }
        ).id
    return out


def _customer(c: stripe.StripeClient, at: int, pm: str | None) -> tuple[str, str]:
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": at})
    cus = c.v1.customers.create({"email": "ops@tenant.io", "test_clock": clock.id})
    if pm:
        attached = c.v1.payment_methods.attach(pm, {"customer": cus.id})
        c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": attached.id}})
    return clock.id, cus.id


def _use(c: stripe.StripeClient, customer: str, at: int, queries: int) -> None:
    c.v1.billing.meter_events.create(
        {
            "event_name": "queries",
            "timestamp": at,
            "identifier": f"{customer}-{at}",
            "payload": {"stripe_customer_id": customer, "value": str(queries)},
        }
    )


def _subscribe(
    c: stripe.StripeClient, customer: str, p: dict[str, str], plan: str, **extra: Any
) -> stripe.Subscription:
    params: Any = {
        "customer": customer,
        "items": [{"price": p[f"{plan}_base"]}, {"price": p[f"{plan}_usage"]}],
        **extra,
    }
    return c.v1.subscriptions.create(params)


def _items(sub: stripe.Subscription) -> tuple[str, str]:
    by_type = {present(i.price.recurring).usage_type: i.id for i in sub["items"].data}
    return by_type["licensed"], by_type["metered"]


def _price(line: stripe.InvoiceLineItem) -> str:
    return str(present(present(line.pricing).price_details).price)


def _line(inv: stripe.Invoice, price: str) -> stripe.InvoiceLineItem:
    found = [ln for ln in inv.lines.data if _price(ln) == price]
    assert len(found) == 1, [ln.description for ln in inv.lines.data]
    return found[0]


def _renewal(c: stripe.StripeClient, customer: str) -> stripe.Invoice:
    invoices = c.v1.invoices.list({"customer": customer}).data
    return next(i for i in invoices if i.billing_reason == "subscription_cycle")


def test_billing_mode_is_explicit_and_validated(stripe_client: stripe.StripeClient):
    c = stripe_client
    p = _prices(c)
    _, cus = _customer(c, JAN31_1430, "pm_card_visa")
    default = _subscribe(c, cus, p, "starter")
    assert default.billing_mode.type == "flexible"  # the default since 2025-09-30.clover
    classic = _subscribe(c, cus, p, "starter", billing_mode={"type": "classic"})
    assert classic.billing_mode.type == "classic"
    with pytest.raises(stripe.InvalidRequestError) as err:
        _subscribe(c, cus, p, "starter", billing_mode={"type": "hybrid"})
    assert err.value.param == "billing_mode[type]"


def test_upgrade_bills_usage_before_the_change_at_the_old_price(
    stripe_client: stripe.StripeClient,
):
    """Flexible mode, starter -> pro on Feb 10 17:30 with always_invoice; anchor Jan 31 14:30."""
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, JAN31_1430, "pm_card_visa")
    sub = _subscribe(c, cus, p, "starter", billing_mode={"type": "flexible"})
    base_item, usage_item = _items(sub)
    assert sub["items"].data[0].current_period_end == FEB28_1430
    change = JAN31_1430 + 10 * DAY + 3 * HOUR
    advance(c, clock, change)
    _use(c, cus, JAN31_1430 + 2 * DAY, 30_000)
    _use(c, cus, JAN31_1430 + 9 * DAY, 5_000)
    items: Any = [
        {"id": base_item, "price": p["pro_base"]},
        {"id": usage_item, "price": p["pro_usage"]},
    ]
    # By hand: starter usage 35,000 - 10,000 free = 25,000 x $0.001 = $25.00 for
    # [Jan 31 14:30, Feb 10 17:30). Base: 1,544,400 of 2,419,200 seconds remain;
    # credit 2900 x that = 1851.34 -> 1851, charge 9900 x that = 6320.09 -> 6320.
    expected_now = 2500 - 1851 + 6320
    preview = c.v1.invoices.create_preview(
        {
            "customer": cus,
            "subscription": sub.id,
            "subscription_details": {
                "items": items,
                "proration_date": change,
                "proration_behavior": "always_invoice",
            },
        }
    )
    assert preview.amount_due == expected_now
    old = _line(preview, p["starter_usage"])
    assert (old.quantity, old.amount) == (35_000, 2500)
    assert (old.period.start, old.period.end) == (JAN31_1430, change)
    updated = c.v1.subscriptions.update(
        sub.id,
        {
            "items": items,
            "proration_date": change,
            "proration_behavior": "always_invoice",
        },
    )
    invoice = c.v1.invoices.retrieve(str(updated.latest_invoice))
    assert invoice.status == "paid" and invoice.amount_paid == expected_now
    old = _line(invoice, p["starter_usage"])
    assert (old.quantity, old.amount, old.period.start, old.period.end) == (
        35_000,
        2500,
        JAN31_1430,
        change,
    )
    # After the change, at pro: 150,000 - 100,000 free = 50,000 x $0.0008 = $40.00.
    advance(c, clock, JAN31_1430 + 21 * DAY)
    _use(c, cus, change + HOUR, 120_000)
    _use(c, cus, JAN31_1430 + 20 * DAY, 30_000)
    advance(c, clock, FEB28_1430 + 2 * HOUR)
    renewal = _renewal(c, cus)
    assert renewal.period_start == JAN31_1430 and renewal.period_end == FEB28_1430
    new = _line(renewal, p["pro_usage"])
    assert (new.quantity, new.amount) == (150_000, 4000)
    assert (new.period.start, new.period.end) == (change, FEB28_1430)
    assert renewal.amount_paid == 9900 + 4000  # no starter usage billed twice
    nxt = c.v1.subscriptions.retrieve(sub.id)["items"].data[0]
    assert nxt.current_period_end == FEB28_1430 + 31 * DAY  # March 31, 14:30


def test_downgrade_puts_old_price_usage_on_the_renewal(stripe_client: stripe.StripeClient):
    """create_prorations: the old price's usage is a pending item billed at the cycle."""
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, MAR15_0945, "pm_card_visa")
    sub = _subscribe(c, cus, p, "pro")
    base_item, usage_item = _items(sub)
    change = MAR15_0945 + 20 * DAY + 5 * HOUR  # Apr 4 14:45
    advance(c, clock, change)
    _use(c, cus, MAR15_0945 + DAY, 140_000)
    c.v1.subscriptions.update(
        sub.id,
        {
            "items": [
                {"id": base_item, "price": p["starter_base"]},
                {"id": usage_item, "price": p["starter_usage"]},
            ],
            "proration_behavior": "create_prorations",
        },
    )
    advance(c, clock, change + 2 * DAY)
    _use(c, cus, change + DAY, 12_500)
    advance(c, clock, APR15_0945 + 2 * HOUR)
    renewal = _renewal(c, cus)
    # pro part: 140,000 - 100,000 = 40,000 x $0.0008 = $32.00, [Mar 15 09:45, Apr 4 14:45)
    old = _line(renewal, p["pro_usage"])
    assert (old.quantity, old.amount, old.period.start, old.period.end) == (
        140_000,
        3200,
        MAR15_0945,
        change,
    )
    # starter part: 12,500 - 10,000 = 2,500 x $0.001 = $2.50, [Apr 4 14:45, Apr 15 09:45)
    new = _line(renewal, p["starter_usage"])
    assert (new.quantity, new.amount, new.period.start, new.period.end) == (
        12_500,
        250,
        change,
        APR15_0945,
    )


def test_classic_mode_and_proration_none_do_not_bill_usage_before_the_change(
    stripe_client: stripe.StripeClient,
):
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, JAN31_1430, "pm_card_visa")
    classic = _subscribe(c, cus, p, "starter", billing_mode={"type": "classic"})
    flexible = _subscribe(c, cus, p, "starter")
    change = JAN31_1430 + 5 * DAY + 7 * HOUR
    advance(c, clock, change)
    _use(c, cus, JAN31_1430 + DAY, 50_000)
    for sub, behavior in ((classic, "create_prorations"), (flexible, "none")):
        _, usage_item = _items(sub)
        c.v1.subscriptions.update(
            sub.id,
            {
                "items": [{"id": usage_item, "price": p["pro_usage"]}],
                "proration_behavior": behavior,
            },
        )
    assert c.v1.invoice_items.list({"customer": cus, "pending": True}).data == []
    advance(c, clock, change + 2 * HOUR)
    _use(c, cus, change + HOUR, 100_500)
    advance(c, clock, FEB28_1430 + 2 * HOUR)
    renewals = [
        i
        for i in c.v1.invoices.list({"customer": cus}).data
        if i.billing_reason != "subscription_create"
    ]
    assert len(renewals) == 2
    for inv in renewals:
        # The customer has one meter, so both subscriptions see the 100,500 queries after the
        # change: 500 over pro's 100,000 = $0.40; the 50,000 before it are billed by neither.
        line = _line(inv, p["pro_usage"])
        assert (line.quantity, line.amount, line.period.start) == (100_500, 40, change)
        assert p["starter_usage"] not in [_price(ln) for ln in inv.lines.data]


def test_cancel_now_with_invoice_now_bills_unbilled_usage_and_credits_unused_time(
    stripe_client: stripe.StripeClient,
):
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, MAR15_0945, "pm_card_visa")
    sub = _subscribe(c, cus, p, "pro")
    cancel_at = MAR15_0945 + 12 * DAY + 6 * HOUR  # Mar 27 15:45
    advance(c, clock, cancel_at)
    _use(c, cus, MAR15_0945 + 5 * DAY, 250_000)
    gone = c.v1.subscriptions.cancel(sub.id, {"invoice_now": True, "prorate": True})
    assert gone.status == "canceled" and gone.ended_at == cancel_at
    final = c.v1.invoices.retrieve(str(gone.latest_invoice))
    assert final.status == "draft" and final.automatically_finalizes_at == cancel_at + HOUR
    _use(c, cus, cancel_at - HOUR, 10_000)  # reported in the grace hour, before the cancellation
    advance(c, clock, cancel_at + 2 * HOUR)
    final = c.v1.invoices.retrieve(final.id)
    # Usage: 260,000 - 100,000 = 160,000 x $0.0008 = $128.00 for [Mar 15 09:45, Mar 27 15:45).
    # Credit: 18.75 of 31 days unused x $99 = 5987.90 -> -5988.
    usage = _line(final, p["pro_usage"])
    assert (usage.quantity, usage.amount) == (260_000, 12800)
    assert (usage.period.start, usage.period.end) == (MAR15_0945, cancel_at)
    credit = _line(final, p["pro_base"])
    assert credit.amount == -5988 and credit.period.start == cancel_at
    assert final.status == "paid" and final.amount_paid == 12800 - 5988


def test_cancel_now_without_invoice_now_discards_unbilled_usage(
    stripe_client: stripe.StripeClient,
):
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, MAR15_0945, "pm_card_visa")
    sub = _subscribe(c, cus, p, "pro")
    advance(c, clock, MAR15_0945 + 12 * DAY)
    _use(c, cus, MAR15_0945 + 5 * DAY, 250_000)
    gone = c.v1.subscriptions.cancel(sub.id)
    assert gone.status == "canceled"
    advance(c, clock, APR15_0945 + 2 * HOUR)
    invoices = c.v1.invoices.list({"customer": cus}).data
    assert [i.billing_reason for i in invoices] == ["subscription_create"]
    assert c.v1.invoice_items.list({"customer": cus, "pending": True}).data == []


def _paused(c: stripe.StripeClient, p: dict[str, str], start: int) -> tuple[str, str, str]:
    """A subscription paused because its trial ended without a payment method."""
    clock, cus = _customer(c, start, None)
    sub = c.v1.subscriptions.create(
        {
            "customer": cus,
            "items": [{"price": p["pro_base"]}],
            "trial_period_days": 14,
            "trial_settings": {"end_behavior": {"missing_payment_method": "pause"}},
        }
    )
    advance(c, clock, start + 14 * DAY + HOUR)
    assert c.v1.subscriptions.retrieve(sub.id).status == "paused"
    card = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": cus})
    c.v1.customers.update(cus, {"invoice_settings": {"default_payment_method": card.id}})
    return clock, cus, sub.id


def test_resume_default_behaviour_does_not_retry_a_failed_payment(
    stripe_client: stripe.StripeClient,
):
    c = stripe_client
    p = _prices(c)
    clock, cus, sub_id = _paused(c, p, MAR15_0945)
    resumed_at = MAR15_0945 + 16 * DAY + 3 * HOUR
    advance(c, clock, resumed_at)
    sub = c.v1.subscriptions.resume(sub_id)
    assert sub.status == "active"  # resumes at once, before any payment attempt
    inv = c.v1.invoices.retrieve(str(sub.latest_invoice))
    assert inv.attempt_count == 0 and inv.amount_due == 9900
    advance(c, clock, resumed_at + 2 * HOUR)
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.attempt_count == 1 and inv.status == "open" and inv.next_payment_attempt is None
    assert c.v1.subscriptions.retrieve(sub_id).status == "past_due"
    advance(c, clock, resumed_at + 20 * DAY)
    assert c.v1.invoices.retrieve(inv.id).attempt_count == 1  # never retried
    assert c.v1.subscriptions.retrieve(sub_id).status == "past_due"


def test_resume_on_payment_success_stays_paused_and_retries_until_paid(
    stripe_client: stripe.StripeClient, stripe_sandbox: SandboxHandle
):
    stripe_sandbox.state.settings.retry_schedule_days = [2, 4, 6]
    c = stripe_client
    p = _prices(c)
    clock, cus, sub_id = _paused(c, p, JAN31_1430)
    resumed_at = JAN31_1430 + 15 * DAY + 5 * HOUR
    advance(c, clock, resumed_at)
    sub = c.v1.subscriptions.resume(sub_id, {"payment_behavior": "resume_on_payment_success"})
    assert sub.status == "paused"
    inv = c.v1.invoices.retrieve(str(sub.latest_invoice))
    assert inv.attempt_count == 1 and inv.next_payment_attempt == resumed_at + 2 * DAY
    good = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus})
    c.v1.customers.update(cus, {"invoice_settings": {"default_payment_method": good.id}})
    advance(c, clock, resumed_at + 2 * DAY + HOUR)
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.status == "paid" and inv.attempt_count == 2
    sub = c.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "active"
    assert c.v1.events.list({"type": "customer.subscription.resumed"}).data
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.subscriptions.resume(sub_id, {"payment_behavior": "resume_on_payment_success"})


def test_resume_rejects_an_unknown_payment_behavior(stripe_client: stripe.StripeClient):
    c = stripe_client
    p = _prices(c)
    _, _, sub_id = _paused(c, p, MAR15_0945)
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.subscriptions.resume(sub_id, {"payment_behavior": "whenever"})
    assert err.value.param == "payment_behavior"


def test_retries_follow_the_configured_schedule(
    stripe_client: stripe.StripeClient, stripe_sandbox: SandboxHandle
):
    stripe_sandbox.state.settings.retry_schedule_days = [1, 2, 4]
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, JAN31_1430, "pm_card_visa")
    sub = c.v1.subscriptions.create({"customer": cus, "items": [{"price": p["pro_base"]}]})
    bad = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": cus})
    c.v1.customers.update(cus, {"invoice_settings": {"default_payment_method": bad.id}})
    first = FEB28_1430 + HOUR  # the renewal finalizes an hour after the period ends
    advance(c, clock, first + HOUR)
    inv = _renewal(c, cus)
    assert inv.attempt_count == 1 and inv.next_payment_attempt == first + DAY
    advance(c, clock, first + DAY + HOUR)
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.attempt_count == 2 and inv.next_payment_attempt == first + 2 * DAY
    advance(c, clock, first + 2 * DAY + HOUR)
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.attempt_count == 3 and inv.next_payment_attempt == first + 4 * DAY
    advance(c, clock, first + 4 * DAY + HOUR)
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.attempt_count == 4 and inv.next_payment_attempt is None
    assert c.v1.subscriptions.retrieve(sub.id).status == "unpaid"


def test_no_retry_without_a_payment_method(stripe_client: stripe.StripeClient):
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, MAR15_0945, None)
    sub = c.v1.subscriptions.create(
        {
            "customer": cus,
            "items": [{"price": p["pro_base"]}],
            "trial_period_days": 14,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        }
    )
    trial_end = MAR15_0945 + 14 * DAY
    advance(c, clock, trial_end + 2 * HOUR)
    inv = c.v1.invoices.retrieve(str(c.v1.subscriptions.retrieve(sub.id).latest_invoice))
    assert inv.attempt_count == 1 and inv.next_payment_attempt is None
    advance(c, clock, trial_end + 25 * DAY)
    inv = c.v1.invoices.retrieve(inv.id)
    assert inv.attempt_count == 1 and inv.status == "open"
    assert c.v1.subscriptions.retrieve(sub.id).status == "past_due"  # no end-of-retries action


def test_cancel_at_period_end_bills_the_last_period_usage(stripe_client: stripe.StripeClient):
    """Anchor Jan 31 14:30: the last period ends Feb 28 14:30 with a final usage invoice."""
    c = stripe_client
    p = _prices(c)
    clock, cus = _customer(c, JAN31_1430, "pm_card_visa")
    sub = _subscribe(c, cus, p, "starter")
    c.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    advance(c, clock, JAN31_1430 + 27 * DAY)
    _use(c, cus, JAN31_1430 + 3 * DAY, 14_000)
    advance(c, clock, FEB28_1430 + 2 * HOUR)
    gone = c.v1.subscriptions.retrieve(sub.id)
    assert gone.status == "canceled" and gone.ended_at == FEB28_1430
    final = c.v1.invoices.retrieve(str(gone.latest_invoice))
    # 14,000 - 10,000 free = 4,000 x $0.001 = $4.00; no base fee for a period that never starts.
    usage = _line(final, p["starter_usage"])
    assert (usage.quantity, usage.amount) == (14_000, 400)
    assert (usage.period.start, usage.period.end) == (JAN31_1430, FEB28_1430)
    assert final.status == "paid" and final.amount_paid == 400
