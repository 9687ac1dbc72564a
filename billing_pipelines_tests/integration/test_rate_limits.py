"""Every Stripe call survives Stripe's rate limiter: onboarding and plan-change bursts at 10/s."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import stripe
from billing_sandbox.stripe import run_in_thread
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as stripe_catalog
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines_tests.support import API_KEY

# Each tenant costs about 25 requests (onboarding and plan change), so the two bursts take
# about 2.5 s of the account's 10/s per tenant. Twelve tenants on six threads keep every thread
# busy with two tenants in each burst: the bursts are as concurrent as with many more tenants,
# long enough (well over the limiter's one-second burst) to be throttled, and take seconds, not
# minutes. The pacing proven does not depend on the count: at most the limit, nothing failed,
# nothing created twice.
WORKERS = 6
TENANTS = 2 * WORKERS
SANDBOX_RATE = 10.0  # requests/s for the account and for each endpoint: below our budget


def _onboard(database_url: str, client: stripe.StripeClient, tenant: str, plan: str) -> Any:
    catalog = load_catalog()
    request = lifecycle.OnboardRequest(
        tenant_id=tenant,
        name=tenant,
        email=f"{tenant}@example.com",
        plan=plan,
        payment_method="pm_card_visa",
        trial=False,
    )
    with psycopg.connect(database_url, row_factory=dict_row) as conn, conn.transaction():
        return lifecycle.onboard(conn, client, catalog, request)


def _change(database_url: str, client: stripe.StripeClient, tenant: str, plan: str) -> Any:
    catalog = load_catalog()
    with psycopg.connect(database_url, row_factory=dict_row) as conn, conn.transaction():
        preview = lifecycle.preview_plan_change(conn, client, catalog, tenant, plan)
        return lifecycle.change_plan(conn, client, catalog, tenant, plan, preview.proration_date)


@pytest.mark.timeout(600)
def test_onboarding_and_plan_change_bursts_at_10_requests_per_second(
    fresh_database_url: str,
) -> None:
    sandbox = run_in_thread(port=0, rate_limit=SANDBOX_RATE, endpoint_rate_limit=SANDBOX_RATE)
    try:
        # The process's default test-mode budget (20/s) is twice what this account allows, so
        # the sandbox answers 429s and every call must wait and retry to get through.
        client = stripe_api.make_client(API_KEY, api_base=sandbox.url, max_network_retries=2)
        assert stripe_api.RateLimits.for_key(API_KEY).global_per_second > SANDBOX_RATE
        stripe_catalog.sync_catalog(client, load_catalog())
        tenants = [f"burst-{i:02d}" for i in range(TENANTS)]
        started, served_before = time.monotonic(), sandbox.requests - sandbox.throttled
        # The catalog's sync may have been throttled already: count each burst's own 429s.
        throttled_before = sandbox.throttled
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            onboarded = list(
                pool.map(lambda t: _onboard(fresh_database_url, client, t, "starter"), tenants)
            )
        onboarding_throttled = sandbox.throttled
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            changed = list(
                pool.map(lambda t: _change(fresh_database_url, client, t, "pro"), tenants)
            )
        elapsed = time.monotonic() - started

        assert [r.detail for r in onboarded] == ["subscribed to starter"] * TENANTS
        assert all(r.detail.startswith("now on pro") for r in changed)
        # The limiter really pushed back during both bursts, and nothing failed for it.
        assert onboarding_throttled > throttled_before
        assert sandbox.throttled > onboarding_throttled
        # Stripe's side: one customer and one live subscription per tenant, nothing twice.
        with sandbox.state.lock:
            customers = Counter(
                c["metadata"].get("tenant_id") for c in sandbox.state.all("customer")
            )
            subscriptions = sandbox.state.all("subscription")
        assert customers == Counter({t: 1 for t in tenants})
        per_customer = Counter(s["customer"] for s in subscriptions)
        assert len(subscriptions) == TENANTS and set(per_customer.values()) == {1}
        for sub in subscriptions:
            keys = {item["price"]["lookup_key"] for item in sub["items"]["data"]}
            assert keys == {"pro_base_monthly", "pro_queries_overage_monthly"}, sub["id"]
        # Our side: every tenant linked to its one customer and subscription.
        with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
            rows = conn.execute(
                "SELECT tenant_id, plan, stripe_customer_id, stripe_subscription_id FROM tenants"
            ).fetchall()
        assert sorted(r["tenant_id"] for r in rows) == tenants
        assert {r["plan"] for r in rows} == {"pro"}
        assert {r["stripe_subscription_id"] for r in rows} == {s["id"] for s in subscriptions}
        # The whole burst can go no faster than the account allows.
        served = sandbox.requests - sandbox.throttled - served_before
        assert served <= SANDBOX_RATE * elapsed + SANDBOX_RATE
    finally:
        sandbox.stop()


def test_a_rate_limit_that_outlasts_the_retries_is_one_stripe_error() -> None:
    sandbox = run_in_thread(port=0, rate_limit=0.2, endpoint_rate_limit=None)
    try:
        limits = stripe_api.RateLimits(
            global_per_second=50,
            endpoint_per_second=50,
            meter_events_per_second=None,
            retries_on_429=2,
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.1,
        )
        client = stripe_api.make_client(API_KEY, api_base=sandbox.url, limits=limits)
        client.v1.customers.list()  # takes the bucket's one token
        with pytest.raises(stripe.RateLimitError) as caught:
            client.v1.customers.list()
        assert sandbox.throttled == 3  # the first answer and two retries, then it gives up
        line = stripe_api.describe_error(caught.value)
        assert line.startswith("Stripe invalid_request_error (rate_limit): Request rate limit")
        assert "HTTP 429" in line and "request req_" in line
    finally:
        sandbox.stop()


class _RecordingClient(stripe_api.PacedRequestsClient):
    """The project's transport, noting the Idempotency-Key of every attempt it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: list[str | None] = []
        self._lock = threading.Lock()

    def _once(self, method: str, url: str, headers: Any, post_data: Any) -> Any:
        with self._lock:
            self.keys.append(dict(headers).get("Idempotency-Key"))
        return super()._once(method, url, headers, post_data)


def test_retried_writes_keep_their_idempotency_key() -> None:
    # A 429 leaves nothing behind, but the retry must still be the same request: one key.
    sandbox = run_in_thread(port=0, rate_limit=2.0, endpoint_rate_limit=None)
    try:
        limits = stripe_api.RateLimits.for_key(API_KEY)
        budget = stripe_api.RequestBudget(limits)  # its own: 20/s against the sandbox's 2/s
        http = _RecordingClient(budget, timeout=10)
        client = stripe.StripeClient(
            api_key=API_KEY, base_addresses={"api": sandbox.url}, http_client=http
        )
        for i in range(6):
            client.v1.customers.create({"name": f"c{i}"})
        assert sandbox.throttled > 0
        keys = Counter(http.keys)
        assert len(keys) == 6 and None not in keys
        assert sum(keys.values()) == 6 + sandbox.throttled
        with sandbox.state.lock:
            assert len(sandbox.state.all("customer")) == 6
    finally:
        sandbox.stop()
