"""When usage goes to Stripe: right after each UTC day ends, and again for late events."""

from datetime import timedelta

import dagster as dg

from billing_pipelines.defs.metering.jobs import usage_to_stripe_job

# At 00:10 UTC the previous day is pushed. A day holding a period boundary carries its part
# before the boundary while that period's invoice is a draft (the account's finalization grace
# period must be 48 hours, see README "boundary policy"), and its part from the boundary once
# the invoice is final: the late-event re-push of the last 3 days below sends that part.
usage_to_stripe_daily = dg.build_schedule_from_partitioned_job(
    usage_to_stripe_job,
    name="usage_to_stripe_daily",
    hour_of_day=0,
    minute_of_hour=10,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

LATE_EVENT_DAYS = 3


@dg.schedule(
    cron_schedule="10 6 * * *",
    job=usage_to_stripe_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def usage_to_stripe_late_events(context: dg.ScheduleEvaluationContext):
    """Re-push the last few days so late warehouse events converge (unchanged days send nothing)."""
    assert context.scheduled_execution_time is not None
    today = context.scheduled_execution_time.date()
    for back in range(1, LATE_EVENT_DAYS + 1):
        key = (today - timedelta(days=back)).isoformat()
        yield dg.RunRequest(run_key=f"late-{today.isoformat()}-{key}", partition_key=key)
