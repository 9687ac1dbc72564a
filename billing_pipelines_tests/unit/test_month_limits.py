"""The simulated month runs under Stripe's test-mode limits, or live mode's when asked."""

from __future__ import annotations

import pytest
from billing_sandbox.month import stripe_rate_limits


def test_test_mode_leaves_the_sandbox_and_every_client_at_their_test_mode_defaults() -> None:
    limits = stripe_rate_limits("test")
    assert limits.sandbox == {} and limits.settings == {}
    assert limits.push_run_config is None
    # docs.stripe.com/rate-limits: 25/s in test mode, the client at 80 % of it; meter events
    # share that budget.
    assert limits.client.global_per_second == 20
    assert limits.client.meter_events_per_second is None


def test_live_mode_is_stripes_documented_live_limits_and_eighty_percent_of_them_for_clients() -> (
    None
):
    limits = stripe_rate_limits("live")
    # docs.stripe.com/rate-limits: 100/s for a live account, 25/s per endpoint, meter events
    # 1,000/s on their own.
    assert limits.sandbox == {
        "rate_limit": 100,
        "endpoint_rate_limit": 25,
        "meter_events_rate_limit": 1000,
    }
    assert limits.settings == {
        "STRIPE_REQUESTS_PER_SECOND": "80",
        "STRIPE_METER_EVENTS_PER_SECOND": "800",
    }
    assert (limits.client.global_per_second, limits.client.endpoint_per_second) == (80, 20)
    assert limits.client.meter_events_per_second == 800
    assert limits.push_run_config == {
        "ops": {"stripe_meter_reports": {"config": {"requests_per_second": 800}}}
    }


@pytest.mark.parametrize("mode", ["production", "", "Live"])
def test_any_other_mode_is_refused(mode: str) -> None:
    with pytest.raises(ValueError, match="'test' or 'live'"):
        stripe_rate_limits(mode)
