"""Mixed interval subscriptions (a yearly flat fee beside monthly metered usage), as documented.

One test per behaviour, each citing its page; every expected instant and amount is worked out by
hand below (calendar dates written out, tiers applied by hand), never computed by sandbox code.
Pages: docs.stripe.com/billing/subscriptions/mixed-interval (flexible mode only, item-level
periods, combined invoices when item periods align and separate ones when they diverge, cancel
cancels every item), docs.stripe.com/changelog/basil/2025-07-30/support-mixed-intervals,
docs.stripe.com/changelog/basil/2025-07-30/cancel-at-enums, stripe.com/docs/subscriptions/
changing (a price on another interval prorates), support.stripe.com/questions/
handling-subscription-changes (a new frequency's first period begins and is charged at once),
docs.stripe.com/billing/customer/balance (a credit applies to the next invoice).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import stripe

from billing_pipelines_tests.support import advance, present

HOUR = 3600


def _at(year: int, month: int, day: int, hour: int, minute: int) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def _prices(c: stripe.StripeClient) -> dict[str, str]:
    """Pro: $99 a month or $990 a year; usage 100,000 queries free, then $0.0008 each."""
    prod = c.v1.products.create({"name": "Pro"})
    meter = c.v1.billing.meters.create(
        {
            "display_name": "Queries",
            "event_name": "mi_queries",
            "default_aggregation": {"formula": "sum"},
        }
    )
    monthly = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 9900,
            "recurring": {"interval": "month"},
        }
    )
    yearly = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 99000,
            "recurring": {"interval": "year"},
        }
    )
    usage = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "tiers": [
                {"up_to": 100_000, "unit_amount": 0},
                {"up_to": "inf", "unit_amount_decimal": Decimal("0.08")},
            ],
        }
    )
    return {"monthly": monthly.id, "yearly": yearly.id, "usage": usage.id}


def _customer(c: stripe.StripeClient, at: int) -> tuple[str, str]:
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": at})
    cus = c.v1.customers.create({"email": "ops@tenant.io", "test_clock": clock.id})
    attached = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": attached.id}})
    return clock.id, cus.id


def _use(c: stripe.StripeClient, customer: str, at: int, queries: int) -> None:
    c.v1.billing.meter_events.create(
        {
            "event_name": "mi_queries",
            "timestamp": at,
            "identifier": f"{customer}-{at}",
            "payload": {"stripe_customer_id": customer, "value": str(queries)},
        }
    )


def _subscribe(
    c: stripe.StripeClient, customer: str, base: str, usage: str, **extra: Any
) -> stripe.Subscription:
    params: Any = {"customer": customer, "items": [{"price": base}, {"price": usage}], **extra}
    return c.v1.subscriptions.create(params)


def _periods(sub: stripe.Subscription) -> dict[str, tuple[int, int]]:
    return {
        present(i.price.recurring).interval
        + ("_metered" if present(i.price.recurring).usage_type == "metered" else ""): (
            i.current_period_start,
            i.current_period_end,
        )
        for i in sub["items"].data
    }


def _item(sub: stripe.Subscription, usage_type: str) -> str:
    return next(
        str(i.id) for i in sub["items"].data if present(i.price.recurring).usage_type == usage_type
    )


def _price(line: stripe.InvoiceLineItem) -> str:
    return str(present(present(line.pricing).price_details).price)


def _cycle_invoices(c: stripe.StripeClient, customer: str) -> list[stripe.Invoice]:
    found = c.v1.invoices.list({"customer": customer, "limit": 100}).data
    return sorted(
        (i for i in found if i.billing_reason == "subscription_cycle"), key=lambda i: i.created
    )


def test_mixed_intervals_need_flexible_billing_mode(stripe_client: stripe.StripeClient) -> None:
    """mixed-interval: "Mixed interval subscriptions must use flexible billing mode"."""
    c = stripe_client
    p = _prices(c)
    _, cus = _customer(c, _at(2026, 1, 31, 14, 30))
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _subscribe(c, cus, p["yearly"], p["usage"], billing_mode={"type": "classic"})
    assert refused.value.param == "items"
    assert "flexible billing mode" in str(refused.value.user_message)
    sub = _subscribe(c, cus, p["yearly"], p["usage"], billing_mode={"type": "flexible"})
    assert sub.status == "active"


def test_item_periods_differ_and_the_first_invoice_bills_the_yearly_fee(
    stripe_client: stripe.StripeClient,
) -> None:
    """mixed-interval and support-mixed-intervals: items.current_period_[start|end] differ per
    item; the first invoice bills the items at creation (usage is billed in arrears)."""
    c = stripe_client
    p = _prices(c)
    start = _at(2026, 1, 31, 14, 30)
    _, cus = _customer(c, start)
    sub = _subscribe(c, cus, p["yearly"], p["usage"], billing_mode={"type": "flexible"})
    assert _periods(sub) == {
        "year": (start, _at(2027, 1, 31, 14, 30)),
        # A month-end anchor: February's period ends on its last day, same time of day.
        "month_metered": (start, _at(2026, 2, 28, 14, 30)),
    }
    first = c.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.status == "paid" and first.amount_paid == 99000
    (line,) = first.lines.data
    assert _price(line) == p["yearly"]
    assert (line.period.start, line.period.end) == (start, _at(2027, 1, 31, 14, 30))


def test_monthly_renewals_bill_usage_alone_and_the_year_end_one_invoice_for_both(
    stripe_client: stripe.StripeClient,
) -> None:
    """mixed-interval: "Stripe generates a single, combined invoice when item-level billing
    periods align and separate invoices when billing periods diverge"."""
    c = stripe_client
    p = _prices(c)
    start = _at(2026, 1, 31, 14, 30)
    clock, cus = _customer(c, start)
    _subscribe(c, cus, p["yearly"], p["usage"], billing_mode={"type": "flexible"})
    # February's period [Jan 31 14:30, Feb 28 14:30): 130,000 queries -> 30,000 x $0.0008.
    advance(c, clock, _at(2026, 2, 28, 14, 29))
    _use(c, cus, start + 5 * HOUR, 70_000)
    _use(c, cus, _at(2026, 2, 28, 14, 29), 60_000)
    advance(c, clock, _at(2026, 2, 28, 16, 0))
    (feb,) = _cycle_invoices(c, cus)
    assert [(_price(ln), ln.quantity, ln.amount) for ln in feb.lines.data] == [
        (p["usage"], 130_000, 2400)
    ]
    assert (feb.period_start, feb.period_end) == (start, _at(2026, 2, 28, 14, 30))
    # The last month [Dec 31 14:30, Jan 31 2027 14:30): 100,500 queries -> 500 x $0.0008.
    advance(c, clock, _at(2027, 1, 31, 14, 29))
    _use(c, cus, _at(2026, 12, 31, 14, 30), 100_000)
    _use(c, cus, _at(2027, 1, 31, 14, 29), 500)
    advance(c, clock, _at(2027, 1, 31, 16, 0))
    cycles = _cycle_invoices(c, cus)
    assert len(cycles) == 12  # Feb 2026 .. Jan 2027: one invoice per monthly renewal
    for monthly in cycles[:-1]:
        assert {_price(ln) for ln in monthly.lines.data} == {p["usage"]}
    year_end = cycles[-1]
    by_price = {_price(ln): ln for ln in year_end.lines.data}
    assert set(by_price) == {p["yearly"], p["usage"]}
    assert (by_price[p["usage"]].quantity, by_price[p["usage"]].amount) == (100_500, 40)
    renewed = by_price[p["yearly"]]
    assert (renewed.period.start, renewed.period.end) == (
        _at(2027, 1, 31, 14, 30),
        _at(2028, 1, 31, 14, 30),
    )
    assert year_end.amount_paid == 99000 + 40


def test_switching_the_base_item_monthly_to_yearly_and_back_prorates_and_diverges(
    stripe_client: stripe.StripeClient,
) -> None:
    """subscriptions/changing ("changing to a price with a different billing interval"
    prorates), handling-subscription-changes and
    mixed-interval (item-level periods; separate invoices when periods diverge). The page is
    silent on the switched item's period: the sandbox restarts it at the change and invoices
    the credit and the new full period at once (the stricter choice); customer/balance: a
    credit carries to the next invoice."""
    c = stripe_client
    p = _prices(c)
    start = _at(2026, 3, 15, 9, 45)
    clock, cus = _customer(c, start)
    sub = _subscribe(c, cus, p["monthly"], p["usage"], billing_mode={"type": "flexible"})
    base = _item(sub, "licensed")
    switch = _at(2026, 3, 25, 18, 20)
    advance(c, clock, switch)
    # Unused monthly fee: (Apr 15 09:45 - Mar 25 18:20) / 31 days = 1,783,500 / 2,678,400 s;
    # 9900 x that = 6592.24 -> a 6592 credit. The yearly fee starts in full: 99,000.
    change: Any = {
        "items": [{"id": base, "price": p["yearly"]}],
        "proration_date": switch,
        "proration_behavior": "always_invoice",
    }
    preview = c.v1.invoices.create_preview(
        {"customer": cus, "subscription": sub.id, "subscription_details": change}
    )
    assert sorted(ln.amount for ln in preview.lines.data) == [-6592, 99000]
    assert preview.amount_due == 99000 - 6592
    updated = c.v1.subscriptions.update(sub.id, change)
    inv = c.v1.invoices.retrieve(str(updated.latest_invoice))
    assert inv.status == "paid" and inv.amount_paid == 92408
    assert _periods(updated) == {
        "year": (switch, _at(2027, 3, 25, 18, 20)),
        "month_metered": (start, _at(2026, 4, 15, 9, 45)),  # usage keeps its own period
    }
    # Diverged: April 15 renews the usage alone (50,000 queries, all free).
    advance(c, clock, _at(2026, 4, 1, 12, 0))
    _use(c, cus, _at(2026, 4, 1, 12, 0), 50_000)
    advance(c, clock, _at(2026, 4, 15, 11, 0))
    (april,) = _cycle_invoices(c, cus)
    assert [(_price(ln), ln.amount) for ln in april.lines.data] == [(p["usage"], 0)]
    # Back to monthly on Jun 3 06:10: unused year (Mar 25 2027 18:20 - Jun 3 2026 06:10) =
    # 25,531,800 of 31,536,000 s; 99,000 x that = 80,151.20 -> an 80,151 credit against a new
    # full month of 9,900: the invoice is -70,251, nothing is charged, the credit carries.
    back = _at(2026, 6, 3, 6, 10)
    advance(c, clock, back)
    change["items"] = [{"id": base, "price": p["monthly"]}]
    change["proration_date"] = back
    updated = c.v1.subscriptions.update(sub.id, change)
    inv = c.v1.invoices.retrieve(str(updated.latest_invoice))
    assert (inv.total, inv.amount_due, inv.ending_balance) == (-70251, 0, -70251)
    assert _periods(updated)["month"] == (back, _at(2026, 7, 3, 6, 10))
    assert c.v1.customers.retrieve(cus).balance == -70251
    # The next invoice (usage renewal Jun 15, 120,000 queries -> 20,000 x $0.0008 = $16) is
    # paid from the credit.
    advance(c, clock, _at(2026, 6, 10, 8, 0))
    _use(c, cus, _at(2026, 6, 10, 8, 0), 120_000)
    advance(c, clock, _at(2026, 6, 15, 11, 0))
    june = _cycle_invoices(c, cus)[-1]
    assert june.total == 1600 and june.amount_due == 0
    assert c.v1.customers.retrieve(cus).balance == -70251 + 1600


def test_cancel_at_period_end_resolves_to_the_earliest_item_end_max_period_end_to_the_latest(
    stripe_client: stripe.StripeClient,
) -> None:
    """cancel-at-enums: "For mixed interval subscriptions the existing cancel_at_period_end
    feature always resolves to the earliest item period end"; max_period_end "Schedules
    cancelation of the subscription at the latest items.data.current_period_end"."""
    c = stripe_client
    p = _prices(c)
    start = _at(2026, 5, 31, 22, 15)
    clock, cus = _customer(c, start)
    sub = _subscribe(c, cus, p["yearly"], p["usage"], billing_mode={"type": "flexible"})
    early = c.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    assert early.cancel_at == _at(2026, 6, 30, 22, 15)
    late = c.v1.subscriptions.update(
        sub.id, {"cancel_at_period_end": False, "cancel_at": "max_period_end"}
    )
    assert late.cancel_at == _at(2027, 5, 31, 22, 15)
    # It runs (and bills usage monthly) until then, and ends with every item.
    advance(c, clock, _at(2027, 5, 31, 23, 0))
    ended = c.v1.subscriptions.retrieve(sub.id)
    assert ended.status == "canceled" and ended.ended_at == _at(2027, 5, 31, 22, 15)
    assert len(_cycle_invoices(c, cus)) == 12  # 11 renewals + the final usage invoice


def test_cancel_now_ends_every_item_and_credits_the_unused_year(
    stripe_client: stripe.StripeClient,
) -> None:
    """mixed-interval: "Canceling a mixed interval subscription ... cancels all the
    subscription items, regardless of their interval"; api/subscriptions/cancel: `prorate`
    credits the unused time, `invoice_now` bills the unbilled usage."""
    c = stripe_client
    p = _prices(c)
    start = _at(2026, 1, 10, 3, 5)
    clock, cus = _customer(c, start)
    sub = _subscribe(c, cus, p["yearly"], p["usage"], billing_mode={"type": "flexible"})
    stop = _at(2026, 4, 20, 15, 5)
    advance(c, clock, stop)
    _use(c, cus, _at(2026, 4, 11, 0, 0), 110_000)  # this month: 10,000 x $0.0008 = $8
    c.v1.subscriptions.cancel(sub.id, {"invoice_now": True, "prorate": True})
    ended = c.v1.subscriptions.retrieve(sub.id)
    assert ended.status == "canceled"
    final = c.v1.invoices.retrieve(str(ended.latest_invoice))
    # Unused year: (Jan 10 2027 03:05 - Apr 20 2026 15:05) = 264 days 12 h = 22,852,800 s of
    # 31,536,000; 99,000 x that = 71,741.10 -> a 71,741 credit.
    amounts = sorted(ln.amount for ln in final.lines.data)
    assert amounts == [-71741, 800]
