"""Onboarding survives a crash after any Stripe call: the re-run ends with one of each.

On the Stripe sandbox over HTTP and PostgreSQL. For every Stripe request a clean onboarding
makes, a fresh tenant is onboarded and the process "dies" right after Stripe answered that
request (Stripe holds its effect; nothing after it runs). The re-run happens after Stripe's
24-hour idempotency window (the sandbox forgets every key), so only the integration's own
bookkeeping can prevent a second customer or subscription.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.pg import database
from billing_pipelines.lib.stripe import catalog as catalog_sync
from billing_pipelines_tests.support import SimulatedCrash
from billing_pipelines_tests.webhook_harness import query


@pytest.fixture
def catalog(stripe_client: stripe.StripeClient) -> Catalog:
    loaded = load_catalog()
    catalog_sync.sync_catalog(stripe_client, loaded)
    return loaded


class StripeWire:
    """Counts Stripe requests, and can kill the process right after the n-th one is answered."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.crash_after: int | None = None


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[StripeWire]:
    state = StripeWire()
    real = stripe.RequestsClient.request_with_retries

    def counting(self: stripe.RequestsClient, method: str, url: str, *a: Any, **kw: Any) -> Any:
        answer = real(self, method, url, *a, **kw)
        state.calls.append(f"{method.upper()} {url.split('/v1/', 1)[-1].split('?')[0]}")
        if state.crash_after is not None and len(state.calls) == state.crash_after:
            raise SimulatedCrash  # Stripe did it; the process dies before anything else
        return answer

    monkeypatch.setattr(stripe.RequestsClient, "request_with_retries", counting)
    yield state


def _request(tenant: str) -> lifecycle.OnboardRequest:
    return lifecycle.OnboardRequest(
        tenant_id=tenant,
        name=f"Tenant {tenant}",
        email=f"billing@{tenant}.example",
        plan="pro",
        payment_method="pm_card_visa",
    )


def _stripe_objects(client: stripe.StripeClient, tenant: str) -> tuple[list[str], list[str]]:
    """Every customer made for the tenant, and every subscription (any status) of those."""
    customers = [
        str(raw["id"])
        for raw in (
            c.to_dict() for c in client.v1.customers.list({"limit": 100}).auto_paging_iter()
        )
        if (raw.get("metadata") or {}).get("tenant_id") == tenant
    ]
    subscriptions = [
        str(s.id)
        for customer in customers
        for s in client.v1.subscriptions.list(
            {"customer": customer, "status": "all", "limit": 100}
        ).auto_paging_iter()
    ]
    return customers, subscriptions


def test_a_crash_after_each_stripe_call_then_a_rerun_ends_with_one_of_each(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    catalog: Catalog,
    wire: StripeWire,
) -> None:
    pool = database.open_pool(fresh_database_url)

    def transaction() -> Any:
        return database.transaction(pool)

    def onboard(tenant: str) -> lifecycle.LifecycleResult:
        return lifecycle.onboard_durably(transaction, stripe_client, catalog, _request(tenant))

    try:
        # A clean onboarding, to learn which Stripe requests it makes.
        onboard("reference")
        clean_calls = list(wire.calls)
        writes = [c for c in clean_calls if c.startswith("POST")]
        assert any(c.endswith("customers") for c in writes)
        assert any(c.endswith("subscriptions") for c in writes)

        for n in range(1, len(clean_calls) + 1):
            tenant = f"crash-{n:02d}"
            wire.calls.clear()
            wire.crash_after = n
            with pytest.raises(SimulatedCrash):
                onboard(tenant)
            crashed_at = wire.calls[-1]
            wire.crash_after = None
            # A day later: Stripe has forgotten every idempotency key.
            stripe_sandbox.state.settings.idempotency_ttl_seconds = -1
            try:
                result = onboard(tenant)
            finally:
                stripe_sandbox.state.settings.idempotency_ttl_seconds = 24 * 3600
            customers, subscriptions = _stripe_objects(stripe_client, tenant)
            assert (len(customers), len(subscriptions)) == (1, 1), (n, crashed_at)
            [row] = query(
                fresh_database_url,
                "SELECT stripe_customer_id, stripe_subscription_id FROM tenants "
                "WHERE tenant_id = %s",
                (tenant,),
            )
            assert row == {
                "stripe_customer_id": customers[0],
                "stripe_subscription_id": subscriptions[0],
            }, (n, crashed_at)
            assert result.subscription_id == subscriptions[0]
            # And the tenant has access like the one onboarded without a crash.
            assert result.api_access_enabled, (n, crashed_at)
    finally:
        pool.close()
