"""A daily pre-aggregated meter across a period boundary that is not at 00:00 UTC.

Stripe's documentation this pins:
- docs.stripe.com/billing/subscriptions/usage-based/recording-usage ("Event ingestion"): on a
  pre-aggregated meter "Stripe only uses the most recently received meter event. A newer event
  sent within the same hourly or daily window overwrites the previous one", by UTC timestamp.
- docs.stripe.com/billing/subscriptions/usage-based/configure-grace-period: "During the
  configured finalization grace period, you can continue to report usage for the previous
  billing period. When the invoice finalizes, Stripe updates it to reflect the latest quantity
  for its billing period" (1 hour by default).
The docs are silent on a day window cut by a period boundary; the sandbox takes the stricter
reading (the newest event of the day replaces the older one for every period), which the
meter push's boundary policy must survive.
"""

from __future__ import annotations

from decimal import Decimal

import stripe

from billing_pipelines_tests.support import advance

JAN5 = 1767571200  # 2026-01-05T00:00:00Z
DAY = 86400
SIGN_UP = JAN5 + 14 * 3600 + 30 * 60  # 14:30:00 UTC
FEB5_BOUNDARY = SIGN_UP + 31 * DAY  # the period ends on 2026-02-05 at 14:30:00 UTC
FEB5 = JAN5 + 31 * DAY


def _setup(c: stripe.StripeClient) -> tuple[str, str, str, str]:
    prod = c.v1.products.create({"name": "Boundary"})
    meter = c.v1.billing.meters.create(
        {
            "display_name": "Queries",
            "event_name": "boundary_queries",
            "default_aggregation": {"formula": "sum"},
            "event_time_window": "day",
        }
    )
    usage = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 1,  # one cent per query keeps the amounts readable
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": SIGN_UP})
    cus = c.v1.customers.create({"test_clock": clock.id})
    pm = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
    sub = c.v1.subscriptions.create({"customer": cus.id, "items": [{"price": usage.id}]})
    return cus.id, sub.id, clock.id, meter.id


def _send(c: stripe.StripeClient, customer: str, ident: str, ts: int, value: int) -> None:
    c.v1.billing.meter_events.create(
        {
            "event_name": "boundary_queries",
            "identifier": ident,
            "timestamp": ts,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
        }
    )


def test_boundary_day_part_reported_in_the_grace_period_stays_on_the_final_invoice(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    customer, sub, clock, meter = _setup(c)
    item = c.v1.subscriptions.retrieve(sub)["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (SIGN_UP, FEB5_BOUNDARY)

    advance(c, clock, FEB5_BOUNDARY + 600)  # the period ended; its invoice is a draft
    draft = next(i for i in c.v1.invoices.list({"subscription": sub}).data if i.status == "draft")
    assert draft.period_end == FEB5_BOUNDARY
    # Feb 5 before 14:30 (700 queries), timestamped inside that part, during the grace hour.
    _send(c, customer, "feb5-pre", FEB5 + 1, 700)
    advance(c, clock, FEB5_BOUNDARY + 2 * 3600)  # finalized (and paid)
    final = c.v1.invoices.retrieve(draft.id)
    assert final.status == "paid"
    assert [ln.quantity for ln in final.lines.data] == [700]

    # After finalization, the day's part from 14:30 (300 queries) replaces the day's event:
    # the final invoice keeps 700, the next period counts 300 (and not the 700).
    _send(c, customer, "feb5-post", FEB5_BOUNDARY + 1, 300)
    assert [ln.quantity for ln in c.v1.invoices.retrieve(draft.id).lines.data] == [700]
    preview = c.v1.invoices.create_preview({"subscription": sub})
    assert [ln.quantity for ln in preview.lines.data if ln.quantity] == [300]
    summaries = c.v1.billing.meters.event_summaries.list(
        meter,
        {"customer": customer, "start_time": FEB5, "end_time": FEB5 + DAY},
    )
    # The day window holds only the newest event (the docs' overwrite rule).
    assert [Decimal(str(s.aggregated_value)) for s in summaries.data] == [Decimal(300)]


def test_a_newer_event_in_the_day_window_replaces_the_older_one_for_every_period(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    customer, sub, clock, _ = _setup(c)
    advance(c, clock, FEB5_BOUNDARY - 600)
    _send(c, customer, "pre", FEB5 + 1, 700)
    _send(c, customer, "post-too-early", FEB5_BOUNDARY - 1800, 300)  # same day, same period
    advance(c, clock, FEB5_BOUNDARY + 2 * 3600)
    (inv,) = [
        i for i in c.v1.invoices.list({"subscription": sub}).data if i.period_end == FEB5_BOUNDARY
    ]
    # Only the newest event of Feb 5 counts: sending the day's later part before the earlier
    # part's invoice is final loses the earlier part, which is why the push waits.
    assert [ln.quantity for ln in inv.lines.data] == [300]


def test_an_older_part_received_last_replaces_the_newer_part_of_the_day(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    customer, _, clock, meter = _setup(c)
    advance(c, clock, FEB5_BOUNDARY + 600)
    _send(c, customer, "post-first", FEB5_BOUNDARY + 1, 300)
    _send(c, customer, "pre-last", FEB5 + 1, 700)  # received last: it is the day's value
    after = c.v1.billing.meters.event_summaries.list(
        meter, {"customer": customer, "start_time": FEB5_BOUNDARY, "end_time": FEB5 + DAY}
    )
    before = c.v1.billing.meters.event_summaries.list(
        meter, {"customer": customer, "start_time": FEB5, "end_time": FEB5_BOUNDARY}
    )
    assert [s.aggregated_value for s in after.data] == [0.0]
    assert [s.aggregated_value for s in before.data] == [700.0]


def test_subscriptions_listed_by_the_day_their_current_period_started(
    stripe_client: stripe.StripeClient,
) -> None:
    # docs.stripe.com/api/subscriptions/list: current_period_start "Only return subscriptions
    # whose maximum item current_period_start falls within the given date interval".
    c = stripe_client
    _, sub, clock, _ = _setup(c)  # period from 2026-01-05 14:30:00

    def listed(gte: int, lt: int) -> list[str]:
        page = c.v1.subscriptions.list(
            {"status": "all", "current_period_start": {"gte": gte, "lt": lt}, "limit": 100}
        )
        return [s.id for s in page.auto_paging_iter()]

    assert sub in listed(JAN5, JAN5 + DAY)
    assert sub not in listed(JAN5 + DAY, JAN5 + 2 * DAY)
    advance(c, clock, FEB5_BOUNDARY + 60)  # renewed on Feb 5 at 14:30
    assert sub in listed(FEB5, FEB5 + DAY)
    assert sub not in listed(JAN5, JAN5 + DAY)


def test_subscriptions_listed_by_the_day_their_current_period_ends(
    stripe_client: stripe.StripeClient,
) -> None:
    # docs.stripe.com/api/subscriptions/list: current_period_end "Only return subscriptions
    # whose minimum item current_period_end falls within the given date interval".
    c = stripe_client
    _, sub, clock, _ = _setup(c)  # period to 2026-02-05 14:30:00

    def listed(**bounds: int) -> list[str]:
        page = c.v1.subscriptions.list(
            {"status": "all", "current_period_end": bounds, "limit": 100}  # type: ignore[arg-type]
        )
        return [s.id for s in page.auto_paging_iter()]

    assert sub in listed(gte=FEB5, lt=FEB5 + DAY)
    assert sub in listed(gte=FEB5_BOUNDARY, lte=FEB5_BOUNDARY)
    assert sub not in listed(gt=FEB5_BOUNDARY, lt=FEB5 + 2 * DAY)
    assert sub not in listed(gte=FEB5 - DAY, lt=FEB5)
    advance(c, clock, FEB5_BOUNDARY + 60)  # renewed: the period now ends on Mar 5
    assert sub not in listed(gte=FEB5, lt=FEB5 + DAY)
    assert sub in listed(gte=FEB5 + 28 * DAY, lt=FEB5 + 29 * DAY)


def test_a_month_end_anchor_renews_on_the_last_day_of_february_at_the_same_instant(
    stripe_client: stripe.StripeClient,
) -> None:
    # docs.stripe.com/billing/subscriptions/billing-cycle: a monthly subscription anchored on
    # the 31st bills on the last day of shorter months, then on the 31st again.
    c = stripe_client
    jan31 = 1769850930  # 2026-01-31T09:15:30Z
    feb28 = jan31 + 28 * DAY  # 2026-02-28T09:15:30Z
    mar31 = feb28 + 31 * DAY  # 2026-03-31T09:15:30Z
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": jan31})
    cus = c.v1.customers.create({"test_clock": clock.id})
    pm = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
    prod = c.v1.products.create({"name": "Anchor"})
    price = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 100,
            "recurring": {"interval": "month"},
        }
    )
    sub = c.v1.subscriptions.create({"customer": cus.id, "items": [{"price": price.id}]})
    item = sub["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (jan31, feb28)
    advance(c, clock.id, feb28 + 2 * 3600)
    item = c.v1.subscriptions.retrieve(sub.id)["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (feb28, mar31)
