"""Catalog runs: sync plans.toml to Stripe on demand."""

import dagster as dg

from billing_pipelines.defs.catalog.assets import stripe_catalog

stripe_catalog_job = dg.define_asset_job(
    "stripe_catalog_job",
    selection=[stripe_catalog],
    description="Sync the plan catalog (products, prices, meters) to Stripe.",
)
