"""When missed webhooks are recovered: daily, from Stripe's event list."""

import dagster as dg

from billing_pipelines.defs.webhooks.jobs import stripe_event_recovery_job

stripe_event_recovery_schedule = dg.ScheduleDefinition(
    name="stripe_event_recovery_daily",
    job=stripe_event_recovery_job,
    cron_schedule="15 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: recover webhooks Stripe gave up on (missed-webhook failure mode).",
)
