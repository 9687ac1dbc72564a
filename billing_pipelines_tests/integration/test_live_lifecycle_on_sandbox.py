"""The opt-in real-Stripe lifecycle test, run here against the sandbox so its code stays right."""

from __future__ import annotations

import stripe

from billing_pipelines_tests.live.test_stripe_test_mode import (
    annual_month,
    lifecycle_month,
    taxed_month,
)
from billing_pipelines_tests.support import advance


def test_live_lifecycle_scenario_passes_on_the_sandbox(
    stripe_client: stripe.StripeClient, fresh_database_url: str
) -> None:
    clock = str(stripe_client.v1.test_helpers.test_clocks.create({"frozen_time": 1_780_000_000}).id)
    lifecycle_month(stripe_client, clock, fresh_database_url, advance)


def test_live_annual_scenario_passes_on_the_sandbox(
    stripe_client: stripe.StripeClient, fresh_database_url: str
) -> None:
    clock = str(stripe_client.v1.test_helpers.test_clocks.create({"frozen_time": 1_780_004_321}).id)
    annual_month(stripe_client, clock, fresh_database_url, advance)


def test_live_taxed_scenario_passes_on_the_sandbox(
    stripe_client: stripe.StripeClient, fresh_database_url: str
) -> None:
    clock = str(stripe_client.v1.test_helpers.test_clocks.create({"frozen_time": 1_780_000_000}).id)
    taxed_month(stripe_client, clock, fresh_database_url, advance)
