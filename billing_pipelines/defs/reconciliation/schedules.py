"""When reconciliation runs: daily, after usage is in Stripe and invoices have finalized."""

import dagster as dg

from billing_pipelines.defs.reconciliation.jobs import reconciliation_job

# After yesterday's usage is in Stripe (usage push schedule) and invoices have finalized.
reconciliation_schedule = dg.ScheduleDefinition(
    name="reconciliation_schedule",
    job=reconciliation_job,
    cron_schedule="30 7 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
