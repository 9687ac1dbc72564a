"""The webhook queue consumer: a sensor names due rows, a run claims and handles them."""

import dagster as dg

from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.defs.webhooks.context import describe_error, handler_setup
from billing_pipelines.lib import alerts, webhook_handlers, webhook_queue
from billing_pipelines.lib.webhook_queue import RetryPolicy
from billing_pipelines.settings import load_settings

BATCH_SIZE = 25
MAX_BATCHES_PER_TICK = 8


def retry_policy() -> RetryPolicy:
    """Backoff 30 s, 1 min, 2 min, ... and dead-letter after WEBHOOK_MAX_ATTEMPTS tries."""
    return RetryPolicy(max_attempts=load_settings().webhook_max_attempts)


class WebhookBatchConfig(dg.Config):
    """The queue rows this run handles (named by the sensor)."""

    row_ids: list[int]


@dg.op
def process_webhook_events(
    context: dg.OpExecutionContext,
    config: WebhookBatchConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.Output[dict[str, int]]:
    """Claim the batch's rows, apply each event's effect once, record outcomes and retries."""
    policy = retry_policy()
    owner = context.run_id
    handlers = handler_setup(stripe.client())
    with billing_db.transaction() as conn:
        claimed = webhook_queue.claim(conn, config.row_ids, owner=owner, policy=policy)
    counts = {"processed": 0, "ignored": 0, "failed": 0, "dead": 0}
    counts["not_claimed"] = len(config.row_ids) - len(claimed)
    for row in claimed:
        actor = f"webhook {row.event_id} (run {owner[:8]})"
        try:
            with billing_db.transaction() as conn:
                if not webhook_queue.still_owned(conn, row.id, owner):
                    counts["not_claimed"] += 1
                    continue
                outcome = webhook_handlers.handle(handlers.context(conn, actor), row.payload)
                webhook_queue.complete(conn, row.id, status=outcome.status, outcome=outcome.detail)
            counts[outcome.status] += 1
            context.log.info(f"{row.event_type} {row.event_id}: {outcome.status}: {outcome.detail}")
        except Exception as exc:  # every failure is recorded on the row, never lost
            error = describe_error(exc)
            with billing_db.transaction() as conn:
                status = webhook_queue.record_failure(conn, row.id, row.attempts, error, policy)
                if status == "dead":
                    alerts.raise_alert(
                        conn,
                        dedup_key=f"webhook_dead:{row.event_id}",
                        kind="webhook_dead_letter",
                        severity="critical",
                        summary=f"Stripe event {row.event_id} ({row.event_type}) dead-lettered "
                        f"after {row.attempts} attempts",
                        details={"event": row.event_id, "type": row.event_type, "error": error},
                        notify=handlers.alert_email,
                    )
            counts[status] += 1
            context.log.warning(
                f"{row.event_type} {row.event_id} attempt {row.attempts} {status}: {error}"
            )
    metadata = {k: dg.MetadataValue.int(v) for k, v in counts.items()}
    if counts["dead"]:
        raise dg.Failure(
            f"{counts['dead']} webhook event(s) dead-lettered (alert raised)", metadata=metadata
        )
    return dg.Output(counts, metadata=metadata)


@dg.job(tags={"domain": "webhooks"})
def webhook_events_job() -> None:
    """Apply queued Stripe events to tenants, dunning and notifications."""
    process_webhook_events()


@dg.sensor(
    job=webhook_events_job,
    minimum_interval_seconds=2,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def webhook_events_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One run per batch of due queue rows; run_key from the row ids and dispatch counts."""
    with billing_db.transaction() as conn:
        due = webhook_queue.select_for_dispatch(
            conn, limit=BATCH_SIZE * MAX_BATCHES_PER_TICK, policy=retry_policy()
        )
    if not due:
        return dg.SkipReason("no webhook event due")
    requests = [
        dg.RunRequest(
            run_key=webhook_queue.batch_run_key("webhook_events", batch),
            run_config=dg.RunConfig(
                ops={"process_webhook_events": WebhookBatchConfig(row_ids=[d.id for d in batch])}
            ),
            tags={"billing/webhook_rows": f"{batch[0].id}-{batch[-1].id}"},
        )
        for batch in webhook_queue.chunks(due, BATCH_SIZE)
    ]
    # The cursor is a hint (highest row handed out); the run_key is the dedup guarantee.
    high = max(int(context.cursor or 0), due[-1].id)
    return dg.SensorResult(run_requests=requests, cursor=str(high))
