"""Helpers for reconciliation tests: the real catalog in the sandbox, tenants, resources."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import stripe

from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.stripe.catalog import sync_catalog
from billing_pipelines_tests.support import API_KEY

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400


def resources(sandbox_url: str, db_url: str) -> dict[str, Any]:
    return {
        "billing_db": BillingDatabase(url=db_url),
        "stripe": StripeResource(api_key=API_KEY, api_base=sandbox_url, max_network_retries=0),
        "warehouse": UsageWarehouse(url=os.environ["CLICKHOUSE_URL"]),
    }


def catalog(client: stripe.StripeClient) -> None:
    """plans.toml in the sandbox: products, lookup-keyed prices, the queries meter."""
    sync_catalog(client, load_catalog())


def prices(client: stripe.StripeClient, plan: str) -> list[str]:
    listed = client.v1.prices.list(
        {"lookup_keys": [f"{plan}_base_monthly", f"{plan}_queries_overage_monthly"]}
    ).data
    return [p.id for p in listed]


def tenant(
    client: stripe.StripeClient,
    db_url: str,
    tenant_id: str,
    *,
    plan: str = "pro",
    frozen_time: int = T0,
    card: str | None = "pm_card_visa",
    trial_days: int | None = None,
) -> tuple[str, str, str]:
    """A customer on its own test clock, a subscription on the plan, and an in-sync tenant row.
    Returns (customer id, subscription id, clock id)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": frozen_time})
    customer = client.v1.customers.create(
        {
            "email": f"{tenant_id}@tenant.example",
            "test_clock": clock.id,
            "metadata": {"tenant_id": tenant_id},
        }
    )
    if card:
        pm = client.v1.payment_methods.attach(card, {"customer": customer.id})
        client.v1.customers.update(
            customer.id, {"invoice_settings": {"default_payment_method": pm.id}}
        )
    params: dict[str, Any] = {
        "customer": customer.id,
        "items": [{"price": p} for p in prices(client, plan)],
    }
    if trial_days:
        params["trial_period_days"] = trial_days
    sub = client.v1.subscriptions.create(params)  # type: ignore[arg-type]
    with psycopg.connect(db_url) as conn:
        conn.execute(
            """
            INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id,
                stripe_subscription_id, billing_status, subscription_status, api_access_enabled)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true)
            """,
            (
                tenant_id,
                f"Tenant {tenant_id}",
                f"{tenant_id}@tenant.example",
                plan,
                customer.id,
                sub.id,
                sub.status,
                sub.status,
            ),
        )
    return customer.id, sub.id, clock.id
