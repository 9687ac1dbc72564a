"""Outbox delivery runs: send a batch of pending emails over SMTP, with retries."""

from typing import TYPE_CHECKING, Any

import dagster as dg

from billing_pipelines.defs.notifications.resources import EmailResource
from billing_pipelines.defs.queue_runs import OUTBOX_QUEUE, QUEUE_RUN_EXECUTOR, queue_job_tags
from billing_pipelines.defs.requeue import RequeueConfig, requeue_from_config
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.alerts import store as alerts
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.notifications.emails import OutboxRow
from billing_pipelines.lib.notifications.recipients import InvalidRecipientError, check_recipient

if TYPE_CHECKING:
    import psycopg


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
    """Send the batch's emails one by one; a bad row fails alone, retries, then dead-letters."""
    outbox = notifications.OUTBOX
    with billing_db.transaction() as conn:
        claim = outbox.claim_due(conn, config.outbox_ids)
    rows = claim.claimed
    counts = {"sent": 0, "failed": 0, "dead": len(claim.dead), "lost": 0}
    counts["skipped"] = len(config.outbox_ids) - len(rows) - len(claim.dead)
    with billing_db.transaction() as conn:
        for row in claim.dead:
            _alert_dead(conn, row, "its attempts were used up by runs that never finished")
            context.log.warning(f"email {row.id} ({row.dedup_key}) dead: attempts used up")

    def fail(row: OutboxRow, error: str, *, permanent: bool = False) -> None:
        with billing_db.transaction() as conn:
            status = outbox.record_failure(conn, row.id, row.attempts, error, permanent=permanent)
            if status == notifications.OUTBOX_TABLE.dead_status:
                _alert_dead(conn, row, error)
        counts["lost" if status is None else status] += 1
        context.log.warning(f"email {row.id} ({row.dedup_key}) not sent ({status}): {error}")

    # A recipient that is not exactly one valid address can never be sent: dead at once.
    sendable = []
    for row in rows:
        try:
            check_recipient(row.recipient)
        except InvalidRecipientError as exc:
            fail(row, str(exc), permanent=True)
            continue
        sendable.append(row)
    pending = {row.id: row for row in sendable}
    try:
        for row, error in email.send(sendable):
            pending.pop(row.id, None)
            if error is not None:
                fail(row, error)
                continue
            with billing_db.transaction() as conn:
                notifications.mark_sent(conn, row.id)
            counts["sent"] += 1
    finally:
        # Whatever stopped the batch, no row it did not reach is left `sending`.
        for row in pending.values():
            fail(row, "delivery stopped before this email was attempted")
    metadata = {
        **{k: dg.MetadataValue.int(v) for k, v in counts.items()},
        "delivered_via": dg.MetadataValue.text(email.describe()),
    }
    if counts["failed"] + counts["dead"] and not email.configured():
        # Loud, not silent: the rows keep their backoff, and the run fails naming the setting
        # (no op retry: it would only burn the rows' attempts).
        raise dg.Failure(
            "SMTP_URL is not set: emails cannot be delivered and stay unsent",
            metadata=metadata,
            allow_retries=False,
        )
    if counts["dead"]:
        # No op retry: the rows are recorded; a retry would only find them dead or backing off.
        raise dg.Failure(
            f"{counts['dead']} email(s) dead-lettered (invalid recipient or "
            f"{outbox.policy.max_attempts} attempts used up)",
            metadata=metadata,
            allow_retries=False,
        )
    return dg.Output(counts, metadata=metadata)


def _alert_dead(conn: "psycopg.Connection[Any]", row: OutboxRow, reason: str) -> None:
    """Record a dead email as an alert (shown with the others, requeued from the CLI).

    No email is sent about it: the outbox is what failed. The run fails too, so the
    failed-run alert reaches the chat channel when one is configured.
    """
    alerts.raise_alert(
        conn,
        dedup_key=f"email_dead:{row.id}",
        kind="email_dead_letter",
        severity="warning",
        summary=f"email {row.id} ({row.dedup_key}) dead-lettered: {reason}"[:300],
        details={"outbox_id": row.id, "dedup_key": row.dedup_key, "reason": reason},
        notify=None,
    )


@dg.job(tags=queue_job_tags("notifications", OUTBOX_QUEUE), executor_def=QUEUE_RUN_EXECUTOR)
def notification_delivery_job() -> None:
    """Send queued customer and operator emails."""
    send_notifications()


@dg.op
def requeue_dead_emails(
    context: dg.OpExecutionContext, config: RequeueConfig, billing_db: BillingDatabase
) -> dg.Output[dict[str, list[int]]]:
    """Make the chosen dead outbox emails pending again, with fresh attempts; audited."""
    return requeue_from_config(context, config, billing_db, notifications.DEAD_EMAILS)


@dg.job(tags={"domain": "notifications"})
def notification_requeue_job() -> None:
    """Send dead-lettered emails again (by id, template, or since)."""
    requeue_dead_emails()
