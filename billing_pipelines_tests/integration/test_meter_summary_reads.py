"""Meter summary reads share Stripe's rate limit: a 429 waits and asks again."""

from __future__ import annotations

from datetime import date

import stripe

from billing_pipelines.lib import stripe_meters
from billing_pipelines.sandbox.stripe import run_in_thread


def test_day_total_survives_the_rate_limit() -> None:
    sandbox = run_in_thread(port=0, rate_limit=5.0)
    try:
        client = stripe.StripeClient(
            api_key="sk_test_reads", base_addresses={"api": sandbox.url}, max_network_retries=0
        )
        meter = client.v1.billing.meters.create(
            {"display_name": "q", "event_name": "q", "default_aggregation": {"formula": "sum"}}
        )
        customer = client.v1.customers.create({})
        # Six times the limit in one burst: without the retry the SDK raises RateLimitError.
        totals = [
            stripe_meters.day_total(client, str(meter.id), str(customer.id), date(2026, 11, 20))
            for _ in range(30)
        ]
        assert totals == [0] * 30
    finally:
        sandbox.stop()
