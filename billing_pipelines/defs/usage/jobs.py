"""Usage runs: compute and store one UTC day of per-tenant usage (backfills from the UI)."""

import dagster as dg

from billing_pipelines.defs.usage.assets import daily_tenant_usage

daily_usage_job = dg.define_asset_job(
    "daily_usage_job",
    selection=[daily_tenant_usage],
    description="Compute and store one UTC day of per-tenant usage.",
)
