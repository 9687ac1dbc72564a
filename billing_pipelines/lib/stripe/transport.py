"""The SDK's requests transport under the process's Stripe rate budget (see client.py)."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import stripe
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential_jitter

from billing_pipelines.lib.stripe.client import RequestBudget, Response, _log_retry, _throttled


class PacedRequestsClient(stripe.RequestsClient):
    """The SDK's requests transport, paced by the shared budget, retrying 429s with backoff."""

    def __init__(self, budget: RequestBudget, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.budget = budget
        limits = budget.limits
        self._retrying = Retrying(
            retry=retry_if_result(_throttled),
            wait=wait_exponential_jitter(
                multiplier=limits.backoff_initial_seconds, max=limits.backoff_max_seconds
            ),
            stop=stop_after_attempt(limits.retries_on_429 + 1),
            before_sleep=_log_retry,
            # Out of retries: hand the last 429 to the SDK, which raises RateLimitError.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )

    def _once(self, method: str, url: str, headers: Any, post_data: Any) -> Response:
        self.budget.acquire(method, urlsplit(url).path)
        return cast(Response, super().request(method, url, headers, post_data))

    def request(  # type: ignore[override]
        self, method: str, url: str, headers: Any, post_data: Any = None
    ) -> Response:
        # Each attempt (the SDK's own retries included) takes a permit; the same headers, and so
        # the same Idempotency-Key, go out on every attempt.
        return cast(Response, self._retrying(self._once, method, url, headers, post_data))
