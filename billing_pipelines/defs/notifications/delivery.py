"""Outbox delivery: a sensor turns pending emails into runs; the op sends them over SMTP."""

import dagster as dg

from billing_pipelines.defs.notifications.resources import EmailResource
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib import notifications
from billing_pipelines.lib.webhook_queue import Dispatched, RetryPolicy, batch_run_key, chunks

BATCH_SIZE = 50
MAX_BATCHES_PER_TICK = 4
# Mail servers recover in minutes to hours: 1 min, 2, 4, ... capped at 1 h, 8 tries.
POLICY = RetryPolicy(max_attempts=8, base_seconds=60, max_seconds=3600)


class OutboxBatchConfig(dg.Config):
    """The outbox rows this run sends (named by the sensor)."""

    outbox_ids: list[int]


@dg.op(retry_policy=dg.RetryPolicy(max_retries=2, delay=5))
def send_notifications(
    context: dg.OpExecutionContext,
    config: OutboxBatchConfig,
    billing_db: BillingDatabase,
    email: EmailResource,
) -> dg.Output[dict[str, int]]:
    """Send the batch's emails; failures retry with backoff, then dead-letter."""
    with billing_db.transaction() as conn:
        rows = notifications.claim(conn, config.outbox_ids, lease_seconds=POLICY.lease_seconds)
    counts = {"sent": 0, "failed": 0, "dead": 0, "skipped": len(config.outbox_ids) - len(rows)}
    for row, error in email.send(rows):
        with billing_db.transaction() as conn:
            if error is None:
                notifications.mark_sent(conn, row.id)
                counts["sent"] += 1
                continue
            status = notifications.mark_failed(
                conn,
                row.id,
                row.attempts,
                error,
                max_attempts=POLICY.max_attempts,
                backoff_seconds=POLICY.backoff_seconds(row.attempts),
            )
            counts[status] += 1
            context.log.warning(f"email {row.id} ({row.dedup_key}) not sent: {error}")
    if counts["dead"]:
        raise dg.Failure(
            f"{counts['dead']} email(s) dead-lettered after {POLICY.max_attempts} attempts",
            metadata={k: dg.MetadataValue.int(v) for k, v in counts.items()},
        )
    return dg.Output(
        counts,
        metadata={
            **{k: dg.MetadataValue.int(v) for k, v in counts.items()},
            "delivered_via": dg.MetadataValue.text(email.describe()),
        },
    )


@dg.job(tags={"domain": "notifications"})
def notification_delivery_job() -> None:
    """Send queued customer and operator emails."""
    send_notifications()


@dg.sensor(
    job=notification_delivery_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def notification_outbox_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One run per batch of due outbox rows; run_key from the row ids and dispatch counts."""
    with billing_db.transaction() as conn:
        due = notifications.select_for_dispatch(
            conn,
            limit=BATCH_SIZE * MAX_BATCHES_PER_TICK,
            redispatch_seconds=POLICY.redispatch_seconds,
            lease_seconds=POLICY.lease_seconds,
        )
    if not due:
        return dg.SkipReason("no email due")
    dispatched = [Dispatched(i, n) for i, n in due]
    requests = [
        dg.RunRequest(
            run_key=batch_run_key("notifications", batch),
            run_config=dg.RunConfig(
                ops={"send_notifications": OutboxBatchConfig(outbox_ids=[d.id for d in batch])}
            ),
            tags={"billing/outbox_ids": f"{batch[0].id}-{batch[-1].id}"},
        )
        for batch in chunks(dispatched, BATCH_SIZE)
    ]
    high = max(int(context.cursor or 0), dispatched[-1].id)
    return dg.SensorResult(run_requests=requests, cursor=str(high))
