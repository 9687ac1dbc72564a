"""When emails go out: one run per batch of due outbox rows."""

import dagster as dg

from billing_pipelines.defs.notifications.jobs import OutboxBatchConfig, notification_delivery_job
from billing_pipelines.defs.queue_runs import OUTBOX_INTERVAL_SECONDS
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.pg.queue import batch_run_key, chunks

BATCH_SIZE = 50

MAX_BATCHES_PER_TICK = 4


@dg.sensor(
    job=notification_delivery_job,
    minimum_interval_seconds=OUTBOX_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def notification_outbox_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One run per batch of due outbox rows; run_key from the row ids and dispatch counts."""
    with billing_db.transaction() as conn:
        due = notifications.OUTBOX.select_for_dispatch(
            conn, limit=BATCH_SIZE * MAX_BATCHES_PER_TICK
        )
    if not due:
        return dg.SkipReason("no email due")
    requests = [
        dg.RunRequest(
            run_key=batch_run_key("notifications", batch),
            run_config=dg.RunConfig(
                ops={"send_notifications": OutboxBatchConfig(outbox_ids=[d.id for d in batch])}
            ),
            tags={"billing/outbox_ids": f"{batch[0].id}-{batch[-1].id}"},
        )
        for batch in chunks(due, BATCH_SIZE)
    ]
    high = max(int(context.cursor or 0), due[-1].id)
    return dg.SensorResult(run_requests=requests, cursor=str(high))
