"""A tenant's billing cycle is read from what Stripe bills: a yearly base item is annual."""

from __future__ import annotations

from typing import Any

from billing_pipelines.lib.stripe.lifecycle import LiveSubscription, SubscriptionItem
from billing_pipelines.lib.stripe.reads import billing_cycle_of


def _raw(*prices: tuple[str, str]) -> dict[str, Any]:
    return {
        "items": {
            "data": [
                {"price": {"recurring": {"usage_type": usage, "interval": interval}}}
                for usage, interval in prices
            ]
        }
    }


def test_a_yearly_base_item_is_the_annual_cycle() -> None:
    assert billing_cycle_of(_raw(("licensed", "year"), ("metered", "month"))) == "annual"
    assert billing_cycle_of(_raw(("licensed", "month"), ("metered", "month"))) == "monthly"
    # Only the base fee decides: a (hypothetical) yearly metered item is not an annual tenant.
    assert billing_cycle_of(_raw(("licensed", "month"), ("metered", "year"))) == "monthly"
    assert billing_cycle_of({}) == "monthly"


def test_live_subscription_reports_its_cycle() -> None:
    items = (
        SubscriptionItem("si_1", "price_y", "licensed", "year"),
        SubscriptionItem("si_2", "price_u", "metered", "month"),
    )
    assert LiveSubscription("sub_1", "active", False, items).billing_cycle == "annual"
    monthly = (SubscriptionItem("si_1", "price_m", "licensed", "month"), items[1])
    assert LiveSubscription("sub_1", "active", False, monthly).billing_cycle == "monthly"


def test_only_the_usage_items_periods_are_usage_boundaries() -> None:
    """After a switch to annual on Jul 20 08:41, the yearly base item's period starts there;
    usage keeps its own monthly period, so that instant is no usage boundary."""
    from billing_pipelines.lib.stripe.periods import times_of, usage_items

    switch, year_end = 1_784_536_860, 1_816_072_860
    usage_start, usage_end = 1_783_603_020, 1_786_281_420
    raw = {
        "id": "sub_1",
        "created": usage_start,
        "start_date": usage_start,
        "billing_cycle_anchor": usage_start,
        "items": {
            "data": [
                {
                    "price": {"recurring": {"usage_type": "licensed", "interval": "year"}},
                    "current_period_start": switch,
                    "current_period_end": year_end,
                },
                {
                    "price": {"recurring": {"usage_type": "metered", "interval": "month"}},
                    "current_period_start": usage_start,
                    "current_period_end": usage_end,
                },
            ]
        },
    }
    assert [i["current_period_start"] for i in usage_items(raw)] == [usage_start]
    assert [int(t.timestamp()) for t in times_of(raw).boundaries] == [usage_start, usage_end]
