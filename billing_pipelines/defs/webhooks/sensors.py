"""When queued Stripe events are handled: one run per batch of due queue rows."""

import dagster as dg

from billing_pipelines.defs.queue_runs import WEBHOOK_EVENTS_INTERVAL_SECONDS
from billing_pipelines.defs.readiness import stripe_not_ready
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.defs.webhooks.jobs import (
    WebhookBatchConfig,
    webhook_events_job,
)
from billing_pipelines.lib.pg.queue import batch_run_key, chunks
from billing_pipelines.lib.webhooks import queue as webhook_queue

BATCH_SIZE = 25

MAX_BATCHES_PER_TICK = 8


@dg.sensor(
    job=webhook_events_job,
    minimum_interval_seconds=WEBHOOK_EVENTS_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def webhook_events_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One run per batch of due queue rows; run_key from the row ids and dispatch counts."""
    if reason := stripe_not_ready():
        return dg.SkipReason(reason)
    with billing_db.transaction() as conn:
        # Dispatch reads only the lease and redispatch times; attempts are the run's business.
        due = webhook_queue.events_queue().select_for_dispatch(
            conn, limit=BATCH_SIZE * MAX_BATCHES_PER_TICK
        )
    if not due:
        return dg.SkipReason("no webhook event due")
    requests = [
        dg.RunRequest(
            run_key=batch_run_key("webhook_events", batch),
            run_config=dg.RunConfig(
                ops={"process_webhook_events": WebhookBatchConfig(row_ids=[d.id for d in batch])}
            ),
            tags={"billing/webhook_rows": f"{batch[0].id}-{batch[-1].id}"},
        )
        for batch in chunks(due, BATCH_SIZE)
    ]
    # The cursor is a hint (highest row handed out); the run_key is the dedup guarantee.
    high = max(int(context.cursor or 0), due[-1].id)
    return dg.SensorResult(run_requests=requests, cursor=str(high))
