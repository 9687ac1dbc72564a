"""The one place that builds a Stripe client: official SDK, base-address override, retries."""

from __future__ import annotations

import stripe


def make_client(
    api_key: str,
    *,
    api_base: str = "https://api.stripe.com",
    max_network_retries: int = 3,
    timeout_seconds: float = 30.0,
) -> stripe.StripeClient:
    """A StripeClient that retries network errors, 409s, 429s and 5xxs with idempotency keys."""
    return stripe.StripeClient(
        api_key=api_key,
        base_addresses={"api": api_base},
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout_seconds),
    )
