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
