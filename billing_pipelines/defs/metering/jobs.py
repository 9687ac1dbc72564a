"""Metering runs: one UTC day of usage, validated, then pushed to Stripe's meters."""

import dagster as dg

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.usage.assets import daily_tenant_usage

usage_to_stripe_job = dg.define_asset_job(
    "usage_to_stripe_job",
    # The freshness check is the sensor's business (usage_sync_freshness_sensor): inside a push
    # of an older day (a backfill, late events) it would fail for reasons that day cannot fix.
    selection=dg.AssetSelection.assets(daily_tenant_usage, stripe_meter_reports)
    - dg.AssetSelection.checks(
        dg.AssetCheckKey(dg.AssetKey("stripe_meter_reports"), "freshness_check")
    ),
    description="One UTC day: usage from the warehouse, validated, then pushed to Stripe meters.",
)
