"""Outbox delivery runs: send a batch of pending emails over SMTP, with retries."""

import dagster as dg

from billing_pipelines.defs.notifications.resources import EmailResource
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.notifications import emails as notifications


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
    outbox = notifications.OUTBOX
    with billing_db.transaction() as conn:
        rows = outbox.claim(conn, config.outbox_ids)
    counts = {"sent": 0, "failed": 0, "dead": 0, "skipped": len(config.outbox_ids) - len(rows)}
    for row, error in email.send(rows):
        with billing_db.transaction() as conn:
            if error is None:
                notifications.mark_sent(conn, row.id)
                counts["sent"] += 1
                continue
            status = outbox.record_failure(conn, row.id, row.attempts, error)
            counts[status] += 1
            context.log.warning(f"email {row.id} ({row.dedup_key}) not sent: {error}")
    if counts["failed"] + counts["dead"] and not email.configured():
        # Loud, not silent: the rows keep their backoff, and the run fails naming the setting
        # (no op retry: it would only burn the rows' attempts).
        raise dg.Failure(
            "SMTP_URL is not set: emails cannot be delivered and stay unsent",
            metadata={k: dg.MetadataValue.int(v) for k, v in counts.items()},
            allow_retries=False,
        )
    if counts["dead"]:
        raise dg.Failure(
            f"{counts['dead']} email(s) dead-lettered after {outbox.policy.max_attempts} attempts",
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
