"""Recovery of missed webhooks: enqueue every Stripe event of the last 30 days we lack."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.lib import stripe_state, webhook_queue
from billing_pipelines.lib.webhook_handlers import HANDLERS


class RecoveryConfig(dg.Config):
    """How far back to look; Stripe's Event.list keeps 30 days."""

    days: int = 30


@dg.op(retry_policy=dg.RetryPolicy(max_retries=3, delay=30))
def recover_stripe_events(
    context: dg.OpExecutionContext,
    config: RecoveryConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.Output[dict[str, int]]:
    """List the handled event types since N days ago and store any the queue lacks."""
    if not 1 <= config.days <= 30:
        raise dg.Failure(f"days must be between 1 and 30 (Stripe keeps 30 days), got {config.days}")
    since = datetime.now(UTC) - timedelta(days=config.days)
    seen = inserted = 0
    types = sorted(HANDLERS)
    events = stripe_state.events_since(stripe.client(), since, types)
    with billing_db.transaction() as conn:
        for event in events:
            seen += 1
            stored = webhook_queue.parse_event(json.dumps(event).encode())
            if webhook_queue.insert_event(conn, stored, "recovery") is not None:
                inserted += 1
                context.log.info(f"recovered {stored.event_type} {stored.event_id}")
    return dg.Output(
        {"listed": seen, "recovered": inserted},
        metadata={
            "events_listed": dg.MetadataValue.int(seen),
            "events_recovered": dg.MetadataValue.int(inserted),
            "since": dg.MetadataValue.text(since.isoformat()),
        },
    )


@dg.job(tags={"domain": "webhooks"})
def stripe_event_recovery_job() -> None:
    """Enqueue Stripe events of the last 30 days that never reached the receiver."""
    recover_stripe_events()


stripe_event_recovery_schedule = dg.ScheduleDefinition(
    name="stripe_event_recovery_daily",
    job=stripe_event_recovery_job,
    cron_schedule="15 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: recover webhooks Stripe gave up on (missed-webhook failure mode).",
)
