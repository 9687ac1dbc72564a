"""The billing calendar: one partition per UTC day, the unit of usage and of meter reports."""

import dagster as dg

# Stripe meters bill by UTC timestamps; partitions in UTC keep a day's usage on one invoice day.
daily_partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC")
