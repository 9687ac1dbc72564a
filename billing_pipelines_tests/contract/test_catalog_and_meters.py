"""Catalog by lookup key, billing meters, meter events, adjustments and summaries."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines_tests.support import advance, present

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400


def _meter(
    c: stripe.StripeClient, name: str = "queries", window: str | None = None, formula: str = "sum"
) -> stripe.billing.Meter:
    params: dict = {
        "display_name": name,
        "event_name": name,
        "default_aggregation": {"formula": formula},
    }
    if window:
        params["event_time_window"] = window
    return c.v1.billing.meters.create(params)  # type: ignore[arg-type]


def test_prices_by_lookup_key_transfer_and_immutability(stripe_client: stripe.StripeClient):
    c = stripe_client
    prod = c.v1.products.create({"name": "Pro"})
    p1 = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 9900,
            "recurring": {"interval": "month"},
            "lookup_key": "pro_base",
        }
    )
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount": 10900,
                "recurring": {"interval": "month"},
                "lookup_key": "pro_base",
            }
        )
    p2 = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 10900,
            "recurring": {"interval": "month"},
            "lookup_key": "pro_base",
            "transfer_lookup_key": True,
        }
    )
    found = c.v1.prices.list({"lookup_keys": ["pro_base"]}).data
    assert [p.id for p in found] == [p2.id]
    assert c.v1.prices.retrieve(p1.id).lookup_key is None
    with pytest.raises(stripe.InvalidRequestError) as e:
        # Stripe prices are immutable: the SDK types already leave unit_amount out of an update.
        c.v1.prices.update(p2.id, {"unit_amount": 1})  # type: ignore[arg-type]
    assert "unit_amount" in str(e.value.user_message)
    assert c.v1.prices.update(p2.id, {"metadata": {"plan": "pro"}}).metadata["plan"] == "pro"


def test_metered_price_needs_meter_and_tiers(stripe_client: stripe.StripeClient):
    c = stripe_client
    prod = c.v1.products.create({"name": "Queries"})
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount": 1,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    m = _meter(c)
    price = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": m.id},
            "tiers": [
                {"up_to": 100000, "unit_amount": 0},
                {"up_to": "inf", "unit_amount_decimal": Decimal("0.08")},
            ],
            "expand": ["tiers"],
        }
    )
    recurring = present(price.recurring)
    assert recurring.meter == m.id and recurring.usage_type == "metered"
    tiers = present(price.tiers)
    assert tiers[0].up_to == 100000 and tiers[1].up_to is None
    assert "tiers" not in c.v1.prices.retrieve(price.id)  # only when expanded, like Stripe


def test_meter_lifecycle(stripe_client: stripe.StripeClient):
    c = stripe_client
    m = _meter(c, "tokens")
    assert m.customer_mapping.event_payload_key == "stripe_customer_id"
    assert m.value_settings.event_payload_key == "value"
    with pytest.raises(stripe.InvalidRequestError):
        _meter(c, "tokens")
    assert c.v1.billing.meters.update(m.id, {"display_name": "Tokens"}).display_name == "Tokens"
    d = c.v1.billing.meters.deactivate(m.id)
    assert d.status == "inactive" and d.status_transitions.deactivated_at
    assert c.v1.billing.meters.reactivate(m.id).status == "active"
    assert [x.id for x in c.v1.billing.meters.list().data] == [m.id]


def test_meter_events_identifier_and_timestamp_bounds(stripe_client: stripe.StripeClient):
    c = stripe_client
    _meter(c)
    cus = c.v1.customers.create({})
    now = int(time.time())
    ev = c.v1.billing.meter_events.create(
        {
            "event_name": "queries",
            "identifier": "t1-2026-01-01",
            "payload": {"stripe_customer_id": cus.id, "value": "10"},
        }
    )
    assert ev.identifier == "t1-2026-01-01" and ev.timestamp >= now
    with pytest.raises(stripe.InvalidRequestError) as dup:
        c.v1.billing.meter_events.create(
            {
                "event_name": "queries",
                "identifier": "t1-2026-01-01",
                "payload": {"stripe_customer_id": cus.id, "value": "10"},
            }
        )
    assert dup.value.http_status == 400
    assert "An event already exists with identifier t1-2026-01-01" in str(dup.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as old:
        c.v1.billing.meter_events.create(
            {
                "event_name": "queries",
                "timestamp": now - 36 * DAY,
                "payload": {"stripe_customer_id": cus.id, "value": "1"},
            }
        )
    assert old.value.code == "timestamp_too_far_in_past"
    with pytest.raises(stripe.InvalidRequestError) as fut:
        c.v1.billing.meter_events.create(
            {
                "event_name": "queries",
                "timestamp": now + 6 * 60,
                "payload": {"stripe_customer_id": cus.id, "value": "1"},
            }
        )
    assert fut.value.code == "timestamp_in_future"
    c.v1.billing.meter_events.create(
        {  # 34 days back and 4 minutes ahead are fine
            "event_name": "queries",
            "timestamp": now - 34 * DAY,
            "payload": {"stripe_customer_id": cus.id, "value": "1"},
        }
    )
    c.v1.billing.meter_events.create(
        {
            "event_name": "queries",
            "timestamp": now + 4 * 60,
            "payload": {"stripe_customer_id": cus.id, "value": "1"},
        }
    )


def test_identifier_reusable_after_24h(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient
):
    c = stripe_client
    _meter(c)
    cus = c.v1.customers.create({})
    body = {
        "event_name": "queries",
        "identifier": "x",
        "payload": {"stripe_customer_id": cus.id, "value": "1"},
    }
    c.v1.billing.meter_events.create(body)  # type: ignore[arg-type]
    stripe_sandbox.state.time_offset = 24 * 3600 + 1
    c.v1.billing.meter_events.create(body)  # type: ignore[arg-type]


def test_pre_aggregated_day_window_summaries_and_cancel(stripe_client: stripe.StripeClient):
    c = stripe_client
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": T0})
    cus = c.v1.customers.create({"test_clock": clock.id})
    daily = _meter(c, "queries", window="day")
    raw = _meter(c, "raw_queries")
    advance(c, clock.id, T0 + 3 * DAY)
    for name in ("queries", "raw_queries"):
        for ident, ts, v in (
            ("a", T0 + 3600, "100"),
            ("b", T0 + 7200, "150"),
            ("c", T0 + DAY + 60, "40"),
        ):
            c.v1.billing.meter_events.create(
                {
                    "event_name": name,
                    "identifier": f"{name}-{ident}",
                    "timestamp": ts,
                    "payload": {"stripe_customer_id": cus.id, "value": v},
                }
            )

    def total(meter_id: str, window: str | None = None) -> list[float]:
        params: stripe.params.billing.MeterEventSummaryListParams = {
            "customer": cus.id,
            "start_time": T0,
            "end_time": T0 + 2 * DAY,
        }
        if window is not None:
            params["value_grouping_window"] = window
        res = c.v1.billing.meters.event_summaries.list(meter_id, params)
        return [s.aggregated_value for s in res.data]

    assert total(daily.id) == [190.0]  # day 1: newest (150) replaces 100; day 2: 40
    assert total(raw.id) == [290.0]
    by_day = total(daily.id, window="day")
    assert sorted(by_day) == [40.0, 150.0]
    adj = c.v1.billing.meter_event_adjustments.create(
        {"event_name": "raw_queries", "type": "cancel", "cancel": {"identifier": "raw_queries-c"}}
    )
    assert adj.status == "pending" and present(adj.cancel).identifier == "raw_queries-c"
    assert total(raw.id) == [250.0]
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.billing.meters.event_summaries.list(
            daily.id, {"customer": cus.id, "start_time": T0 + 1, "end_time": T0 + DAY}
        )


def test_cancel_adjustment_only_within_24h(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient
):
    c = stripe_client
    _meter(c)
    cus = c.v1.customers.create({})
    c.v1.billing.meter_events.create(
        {
            "event_name": "queries",
            "identifier": "late",
            "payload": {"stripe_customer_id": cus.id, "value": "1"},
        }
    )
    stripe_sandbox.state.time_offset = 25 * 3600
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.billing.meter_event_adjustments.create(
            {"event_name": "queries", "type": "cancel", "cancel": {"identifier": "late"}}
        )


def test_payment_methods_from_test_tokens_and_numbers(stripe_client: stripe.StripeClient):
    c = stripe_client
    cus = c.v1.customers.create({})
    visa = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    assert present(visa.card).last4 == "4242" and visa.customer == cus.id
    fail = c.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4000000000000341", "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    assert present(c.v1.payment_methods.attach(fail.id, {"customer": cus.id}).card).last4 == "0341"
    with pytest.raises(stripe.CardError) as e:
        c.v1.payment_methods.attach("pm_card_chargeDeclined", {"customer": cus.id})
    assert e.value.code == "card_declined"
    listed = c.v1.customers.payment_methods.list(cus.id)
    assert {present(p.card).last4 for p in listed.data} == {"4242", "0341"}
    c.v1.payment_methods.detach(visa.id)
    assert len(c.v1.payment_methods.list({"customer": cus.id}).data) == 1
