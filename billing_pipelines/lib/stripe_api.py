"""The one place that builds a Stripe client: official SDK, base-address override, retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import stripe
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

F = TypeVar("F", bound=Callable[..., object])


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


def is_transient(exc: BaseException) -> bool:
    """A 429, a 5xx, a lock timeout or a network failure: asking again may succeed."""
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        return status == 429 or status >= 500 or (status == 409 and exc.code == "lock_timeout")
    return False


def retry_reads(func: F) -> F:
    """Retry a read of Stripe on transient failures with backoff (8 tries, up to 8 s apart).

    Only for reads, which are safe to repeat. The SDK retries 5xx and network errors itself
    (`max_network_retries`), but never a 429 without `Stripe-Should-Retry`; a rate-limited read
    in a snapshot or a remediation must wait and ask again, not fail the run.
    """
    retrying = retry(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(initial=0.5, max=8),
        stop=stop_after_attempt(8),
        reraise=True,
    )
    return cast("F", retrying(func))
