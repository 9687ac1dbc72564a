"""The usage sync deadline: yesterday's usage is in Stripe within the lag budget.

This module holds a `@dg.definitions` function, and Dagster's defs-folder loader takes only
that function's definitions from such a module: keep every other metering definition out of it.
"""

import dagster as dg

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.settings import load_settings


@dg.definitions
def usage_sync_freshness() -> dg.Definitions:
    """Yesterday's usage must be in Stripe within the sync-lag budget after the day ends."""
    lag_hours = load_settings().usage_sync_lag_hours
    hours, minutes = int(lag_hours), int(round((lag_hours % 1) * 60))
    checks = dg.build_time_partition_freshness_checks(
        assets=[stripe_meter_reports],
        deadline_cron=f"{minutes} {hours % 24} * * *",
        timezone="UTC",
        severity=dg.AssetCheckSeverity.ERROR,
    )
    sensor = dg.build_sensor_for_freshness_checks(
        freshness_checks=checks, name="usage_sync_freshness_sensor"
    )
    return dg.Definitions(asset_checks=checks, sensors=[sensor])
