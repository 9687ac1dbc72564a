"""When trial reminders go out: daily, for trials ending within 3 days without a card."""

import dagster as dg

from billing_pipelines.defs.dunning.jobs import trial_reminders_job

trial_reminders_schedule = dg.ScheduleDefinition(
    name="trial_reminders_daily",
    job=trial_reminders_job,
    cron_schedule="0 9 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: trials ending within 3 days without a payment method get a reminder.",
)
