"""When reconciliation runs: daily, after usage is in Stripe and invoices have finalized."""

import dagster as dg

from billing_pipelines.defs.reconciliation.jobs import late_usage_billing_job, reconciliation_job

# After yesterday's usage is in Stripe (usage push schedule) and invoices have finalized.
reconciliation_schedule = dg.ScheduleDefinition(
    name="reconciliation_schedule",
    job=reconciliation_job,
    cron_schedule="30 7 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

# An hour after the audit: its under-charges (usage that arrived after a final invoice) go on
# the customers' next invoices as correction lines, each once (a stale audit bills nothing
# again).
late_usage_billing_schedule = dg.ScheduleDefinition(
    name="late_usage_billing_schedule",
    job=late_usage_billing_job,
    cron_schedule="30 8 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
