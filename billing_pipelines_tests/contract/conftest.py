"""Fixtures: a Stripe sandbox on a free loopback port and official-SDK clients pointed at it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import stripe

from billing_pipelines.sandbox.stripe import SandboxHandle, Settings, run_in_thread

API_KEY = "sk_test_sandbox_contract"


@pytest.fixture
def stripe_sandbox() -> Iterator[SandboxHandle]:
    """A fresh sandbox (empty state) per test; webhook retries compressed to milliseconds."""
    handle = run_in_thread(port=0)
    handle.state.settings = Settings(webhook_backoff_seconds=[0.05, 0.1, 0.2])
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def stripe_client(stripe_sandbox: SandboxHandle) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key=API_KEY,
        base_addresses={"api": stripe_sandbox.url},
        max_network_retries=0,
    )


def advance(
    client: stripe.StripeClient, clock_id: str, frozen_time: int, timeout: float = 10.0
) -> stripe.test_helpers.TestClock:
    """Advance a test clock through the API and poll until it is ready (like real Stripe)."""
    client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": frozen_time})
    deadline = time.monotonic() + timeout
    while True:
        clock = client.v1.test_helpers.test_clocks.retrieve(clock_id)
        if clock.status == "ready":
            return clock
        if time.monotonic() > deadline:
            raise TimeoutError(clock_id)
        time.sleep(0.01)
