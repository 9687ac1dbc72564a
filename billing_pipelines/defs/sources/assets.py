"""Sources the pipelines read but do not produce: the warehouse, Stripe, the catalog, Postgres.

Each is an external asset (`dg.AssetSpec`): Dagster cannot materialize it, but it appears in the
lineage so the graph shows where every number comes from. Dependencies say what each one is
made from: Stripe builds invoices from the meters and the subscriptions, the meters from our
meter reports and the catalog's meter definitions, and sends webhooks about what changed.
"""

import dagster as dg

GROUP = "sources"

usage_events = dg.AssetSpec(
    "usage_events",
    group_name=GROUP,
    kinds={"clickhouse"},
    tags={"domain": "usage"},
    description=(
        "The SaaS's ClickHouse table of metered events (queries, tokens, embeddings): the "
        "usage truth, deduplicated by query id."
    ),
)

plan_catalog = dg.AssetSpec(
    "plan_catalog",
    group_name=GROUP,
    kinds={"file"},
    tags={"domain": "catalog"},
    description="plans.toml: plans, base fees, included queries and graduated overage tiers.",
)

tenants = dg.AssetSpec(
    "tenants",
    group_name=GROUP,
    kinds={"postgres"},
    tags={"domain": "tenants"},
    description=(
        "The tenant table the SaaS API reads: Stripe customer, plan, API access and rate limit."
    ),
)

stripe_meters = dg.AssetSpec(
    "stripe_meters",
    deps=["stripe_meter_reports", "stripe_catalog"],
    group_name=GROUP,
    kinds={"stripe"},
    tags={"domain": "metering"},
    description=(
        "Stripe Billing Meters and the day totals they hold per customer (meter event summaries)."
    ),
)

stripe_customers = dg.AssetSpec(
    "stripe_customers",
    group_name=GROUP,
    kinds={"stripe"},
    tags={"domain": "stripe"},
    description="Stripe customers, one per tenant, with their default payment method.",
)

stripe_subscriptions = dg.AssetSpec(
    "stripe_subscriptions",
    deps=[stripe_customers, "stripe_catalog"],
    group_name=GROUP,
    kinds={"stripe"},
    tags={"domain": "stripe"},
    description=(
        "Stripe subscriptions on the catalog's prices: status, period, trial, cancellation."
    ),
)

stripe_invoices = dg.AssetSpec(
    "stripe_invoices",
    deps=[stripe_meters, stripe_subscriptions],
    group_name=GROUP,
    kinds={"stripe"},
    tags={"domain": "stripe"},
    description=(
        "Stripe invoices: base fees from the subscriptions, usage lines from the meters' totals "
        "over each period, payment status."
    ),
)

webhook_events = dg.AssetSpec(
    "webhook_events",
    deps=[stripe_invoices, stripe_subscriptions, stripe_customers],
    group_name=GROUP,
    kinds={"postgres"},
    tags={"domain": "webhooks"},
    description=(
        "The queue of verified Stripe webhook events in PostgreSQL, each with its processing "
        "status."
    ),
)
