"""Metering runs: one UTC day of usage, validated, then pushed to Stripe's meters."""

import dagster as dg

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.usage.assets import daily_tenant_usage

usage_to_stripe_job = dg.define_asset_job(
    "usage_to_stripe_job",
    selection=dg.AssetSelection.assets(daily_tenant_usage, stripe_meter_reports),
    description="One UTC day: usage from the warehouse, validated, then pushed to Stripe meters.",
)
