"""Lifecycle actions against the Stripe sandbox and embedded PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as stripe_catalog
from billing_pipelines_tests.support import advance

DAY = 86_400


@pytest.fixture
def catalog(stripe_client: stripe.StripeClient) -> Catalog:
    loaded = load_catalog()
    stripe_catalog.sync_catalog(stripe_client, loaded)
    return loaded


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as c:
        yield c


def _tid() -> str:
    return f"lc-{uuid.uuid4().hex[:8]}"


def _clock(client: stripe.StripeClient, start: int = 1_780_000_000) -> str:
    return str(client.v1.test_helpers.test_clocks.create({"frozen_time": start}).id)


def _onboard(conn: Any, client: Any, catalog: Catalog, tenant: str, **kw: Any) -> Any:
    with conn.transaction():
        request = lifecycle.OnboardRequest(
            tenant_id=tenant, name="Acme", email="ops@acme.test", plan=kw.pop("plan", "pro"), **kw
        )
        return lifecycle.onboard(conn, client, catalog, request)


def _audit_actions(conn: Any, tenant: str) -> list[str]:
    rows = conn.execute(
        "SELECT action FROM audit_log WHERE entity_id = %s ORDER BY id", (tenant,)
    ).fetchall()
    return [r["action"] for r in rows]


def test_onboarding_is_idempotent_and_starts_a_trial(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    tenant = _tid()
    first = _onboard(conn, stripe_client, catalog, tenant, payment_method="pm_card_visa")
    again = _onboard(conn, stripe_client, catalog, tenant, payment_method="pm_card_visa")
    assert first.subscription_status == "trialing" and first.api_access_enabled
    assert (again.customer_id, again.subscription_id) == (first.customer_id, first.subscription_id)
    customers = stripe_client.v1.customers.search({"query": f"metadata['tenant_id']:'{tenant}'"})
    assert len(customers.data) == 1
    sub = stripe_client.v1.subscriptions.retrieve(str(first.subscription_id))
    assert sub.trial_settings is not None
    assert sub.trial_settings.end_behavior.missing_payment_method == "pause"
    assert {item.price.lookup_key for item in sub["items"].data} == {
        "pro_base_monthly",
        "pro_queries_overage_monthly",
    }
    row = conn.execute("SELECT * FROM tenants WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row["stripe_subscription_id"] == first.subscription_id
    assert row["billing_status"] == "trialing"
    assert "tenant.link_customer" in _audit_actions(conn, tenant)


def test_unknown_plan_and_unknown_tenant_are_clear_errors(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    with pytest.raises(Exception, match="unknown plan 'gold'"):
        _onboard(conn, stripe_client, catalog, _tid(), plan="gold")
    with pytest.raises(lifecycle.LifecycleError, match="unknown tenant"):
        lifecycle.cancel(conn, stripe_client, catalog, "nobody-here")


def test_upgrade_preview_equals_what_is_charged(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    tenant, clock = _tid(), _clock(stripe_client)
    _onboard(
        conn,
        stripe_client,
        catalog,
        tenant,
        payment_method="pm_card_visa",
        trial=False,
        test_clock=clock,
    )
    halfway = 1_780_000_000 + 15 * DAY
    advance(stripe_client, clock, halfway)
    with conn.transaction():
        preview = lifecycle.preview_plan_change(conn, stripe_client, catalog, tenant, "enterprise")
    assert preview.proration_behavior == "always_invoice"
    assert preview.proration_date == halfway
    assert preview.amount_due > 0
    with conn.transaction():
        result = lifecycle.change_plan(
            conn, stripe_client, catalog, tenant, "enterprise", preview.proration_date
        )
    assert result.detail.startswith("now on enterprise")
    invoices = stripe_client.v1.invoices.list({"customer": str(result.customer_id), "limit": 10})
    proration = [i for i in invoices.data if i.billing_reason == "subscription_update"]
    assert [i.amount_due for i in proration] == [preview.amount_due]
    row = conn.execute("SELECT plan FROM tenants WHERE tenant_id = %s", (tenant,)).fetchone()
    assert row["plan"] == "enterprise"


def test_cancel_at_period_end_keeps_access_then_cancel_now_revokes_it(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    tenant = _tid()
    _onboard(conn, stripe_client, catalog, tenant, payment_method="pm_card_visa", trial=False)
    with conn.transaction():
        later = lifecycle.cancel(conn, stripe_client, catalog, tenant)
    assert later.api_access_enabled and later.subscription_status == "active"
    with conn.transaction():
        withdrawn = lifecycle.reactivate(conn, stripe_client, catalog, tenant)
    assert withdrawn.detail == "pending cancellation withdrawn"
    with conn.transaction():
        now = lifecycle.cancel(conn, stripe_client, catalog, tenant, immediately=True)
    assert now.subscription_status == "canceled" and not now.api_access_enabled
    assert "tenant.revoke_access" in _audit_actions(conn, tenant)
    with conn.transaction():
        again = lifecycle.reactivate(conn, stripe_client, catalog, tenant)
    assert again.subscription_id != now.subscription_id
    assert again.subscription_status == "active" and again.api_access_enabled


def test_card_update_pays_the_failed_invoice_and_restores_access(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog, stripe_sandbox: SandboxHandle
) -> None:
    tenant = _tid()
    result = _onboard(
        conn,
        stripe_client,
        catalog,
        tenant,
        payment_method="pm_card_chargeCustomerFail",
        trial=False,
    )
    # allow_incomplete: the first charge failed, the subscription waits for a good card.
    assert result.subscription_status == "incomplete" and not result.api_access_enabled
    with conn.transaction():
        fixed = lifecycle.update_payment_method(
            conn, stripe_client, catalog, tenant, "pm_card_visa"
        )
    assert len(fixed.extra["paid"]) == 1
    assert fixed.subscription_status == "active" and fixed.api_access_enabled


def test_portal_link_for_the_tenant(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    tenant = _tid()
    _onboard(conn, stripe_client, catalog, tenant)
    with conn.transaction():
        url = lifecycle.portal_url(conn, stripe_client, tenant, "https://app.example.com/billing")
    assert url.startswith("https://billing.stripe.com/p/session/")


def test_trial_without_card_pauses_then_card_and_reactivate_resume(
    conn: Any, stripe_client: stripe.StripeClient, catalog: Catalog
) -> None:
    tenant, clock = _tid(), _clock(stripe_client)
    _onboard(conn, stripe_client, catalog, tenant, test_clock=clock)
    advance(stripe_client, clock, 1_780_000_000 + 15 * DAY)  # the 14-day trial is over
    with conn.transaction():
        carded = lifecycle.update_payment_method(
            conn, stripe_client, catalog, tenant, "pm_card_visa"
        )
    # No card at trial end: Stripe paused the subscription and access stopped.
    assert carded.subscription_status == "paused" and not carded.api_access_enabled
    with conn.transaction():
        resumed = lifecycle.reactivate(conn, stripe_client, catalog, tenant)
    assert resumed.detail == "resumed the paused subscription"
    assert resumed.subscription_status == "active" and resumed.api_access_enabled
