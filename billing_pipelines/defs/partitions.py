"""The billing calendar: one partition per UTC day, the unit of usage and of meter reports."""

import dagster as dg

from billing_pipelines.settings import load_settings

# Stripe meters bill by UTC timestamps; partitions in UTC keep a day's usage on one invoice day.
# They start on the first usage day (USAGE_START_DATE), so the catalog shows no empty history.
# Partitions shape the definitions, so this one setting is read when the code location loads.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=load_settings().usage_start_date.isoformat(), timezone="UTC"
)
