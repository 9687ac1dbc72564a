"""Webhook runs: claim queued Stripe events and apply each effect once; recover missed events."""

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from billing_pipelines.defs.queue_runs import (
    QUEUE_RUN_EXECUTOR,
    WEBHOOK_EVENTS_QUEUE,
    queue_job_tags,
)
from billing_pipelines.defs.requeue import RequeueConfig, requeue_from_config
from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.defs.webhooks.context import HandlerSetup, describe_error, handler_setup
from billing_pipelines.lib.alerts import store as alerts
from billing_pipelines.lib.pg.queue import Claim, LeasedQueue, RetryPolicy
from billing_pipelines.lib.stripe import reads as stripe_state
from billing_pipelines.lib.webhooks import handlers as webhook_handlers
from billing_pipelines.lib.webhooks import queue as webhook_queue
from billing_pipelines.lib.webhooks.batch_reads import BatchReads
from billing_pipelines.lib.webhooks.handlers import HANDLERS
from billing_pipelines.lib.webhooks.queue import ClaimedEvent
from billing_pipelines.settings import load_settings

if TYPE_CHECKING:
    import psycopg


def retry_policy(max_attempts: int | None = None) -> RetryPolicy:
    """Backoff 30 s, 1 min, 2 min, ... and dead-letter after max_attempts (WEBHOOK_MAX_ATTEMPTS)."""
    if max_attempts is None:
        max_attempts = load_settings().webhook_max_attempts
    return webhook_queue.events_policy(max_attempts)


class WebhookBatchConfig(dg.Config):
    """The queue rows this run handles (named by the sensor), and its run knobs."""

    row_ids: list[int]
    # Unset means "from the environment" (WEBHOOK_MAX_ATTEMPTS, ALERT_EMAIL), read when the
    # run starts, never when the definitions load.
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=50,
        description="Tries before a failing event is dead-lettered (unset: WEBHOOK_MAX_ATTEMPTS)",
    )
    alert_email: str | None = Field(
        default=None,
        description="Where dead-letter alerts are emailed (unset: ALERT_EMAIL)",
    )


@dg.op
def process_webhook_events(
    context: dg.OpExecutionContext,
    config: WebhookBatchConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.Output[dict[str, int]]:
    """Claim the batch's rows one by one, apply each effect once, record outcomes and retries."""
    queue = webhook_queue.events_queue(retry_policy(config.max_attempts))
    owner = context.run.run_id
    reads = BatchReads()
    handlers = handler_setup(
        stripe.client(), alert_email=config.alert_email, livemode=stripe.livemode(), reads=reads
    )
    counts = {"processed": 0, "ignored": 0, "failed": 0, "dead": 0, "not_claimed": 0}
    # Each handled event's outcome, logged as one message when the run ends (each row also
    # keeps its own outcome): one stored log event per run rather than one per event.
    handled: list[str] = []
    try:
        _handle_rows(context, config, billing_db, queue, owner, handlers, counts, handled)
    finally:
        if handled:
            context.log.info(
                f"{len(handled)} event(s) handled, {reads.reused} Stripe read(s) reused:\n"
                + "\n".join(handled)
            )
    metadata = {k: dg.MetadataValue.int(v) for k, v in counts.items()}
    metadata["stripe_reads_reused"] = dg.MetadataValue.int(reads.reused)
    if counts["dead"]:
        raise dg.Failure(
            f"{counts['dead']} webhook event(s) dead-lettered (alert raised)", metadata=metadata
        )
    return dg.Output(counts, metadata=metadata)


def _claim_row(
    conn: "psycopg.Connection[Any]",
    queue: LeasedQueue[ClaimedEvent],
    row_id: int,
    owner: str,
    alert_email: str | None,
) -> Claim[ClaimedEvent]:
    """Claim one row in the caller's transaction; a row whose runs kept dying (attempts used up
    while claimed) is dead-lettered by the claim instead, with an alert."""
    claim = queue.claim_due(conn, [row_id], owner=owner)
    for dead in claim.dead:
        alerts.raise_alert(
            conn,
            dedup_key=f"webhook_dead:{dead.event_id}",
            kind="webhook_dead_letter",
            severity="critical",
            summary=f"Stripe event {dead.event_id} ({dead.event_type}) dead-lettered: "
            f"its {dead.attempts} attempts were used up by runs that never finished",
            details={"event": dead.event_id, "type": dead.event_type, "attempts": dead.attempts},
            notify=alert_email,
        )
    return claim


def _handle_rows(
    context: dg.OpExecutionContext,
    config: WebhookBatchConfig,
    billing_db: BillingDatabase,
    queue: LeasedQueue[ClaimedEvent],
    owner: str,
    handlers: HandlerSetup,
    counts: dict[str, int],
    handled: list[str],
) -> None:
    """Claim, handle and record each of the run's rows in turn, counting the outcomes.

    One row is claimed at a time, just before it is handled: an event that kills the run
    spends only its own attempt, never those of the rows queued behind it. The next row's
    claim commits in the transaction that records this row's outcome (one commit per row
    rather than two): it still happens after this row is done and before the next is handled,
    so a crash leaves exactly what a separate claim would have left.
    """
    row_ids = sorted(set(config.row_ids))
    taken: Claim[ClaimedEvent] | None = None  # the next row's claim, already committed
    for index, row_id in enumerate(row_ids):
        following = row_ids[index + 1] if index + 1 < len(row_ids) else None
        claim = taken
        taken = None
        if claim is None:
            with billing_db.transaction() as conn:
                claim = _claim_row(conn, queue, row_id, owner, handlers.alert_email)
        for dead in claim.dead:
            counts["dead"] += 1
            context.log.warning(f"{dead.event_type} {dead.event_id}: dead (attempts used up)")
        if not claim.claimed:
            counts["not_claimed"] += 0 if claim.dead else 1
            continue
        [row] = claim.claimed
        actor = f"webhook {row.event_id} (run {owner[:8]})"
        try:
            with billing_db.transaction() as conn:
                if not queue.still_owned(conn, row.id, owner):
                    counts["not_claimed"] += 1
                    continue
                outcome = webhook_handlers.handle(handlers.context(conn, actor), row.payload)
                queue.complete(conn, row.id, status=outcome.status, outcome=outcome.detail)
                if following is not None:
                    taken = _claim_row(conn, queue, following, owner, handlers.alert_email)
            counts[outcome.status] += 1
            handled.append(f"{row.event_type} {row.event_id}: {outcome.status}: {outcome.detail}")
        except Exception as exc:  # every failure is recorded on the row, never lost
            taken = None  # rolled back with the row's transaction: claimed again on its own
            error = describe_error(exc)
            with billing_db.transaction() as conn:
                status = queue.record_failure(conn, row.id, row.attempts, error, owner=owner)
                if status is None:
                    # Taken over after the lease: the new owner decides; no false alert.
                    counts["not_claimed"] += 1
                    context.log.warning(f"{row.event_id}: claim lost; its failure not recorded")
                    continue
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
                if following is not None:
                    taken = _claim_row(conn, queue, following, owner, handlers.alert_email)
            counts[status] += 1
            context.log.warning(
                f"{row.event_type} {row.event_id} attempt {row.attempts} {status}: {error}"
            )


@dg.job(tags=queue_job_tags("webhooks", WEBHOOK_EVENTS_QUEUE), executor_def=QUEUE_RUN_EXECUTOR)
def webhook_events_job() -> None:
    """Apply queued Stripe events to tenants, dunning and notifications."""
    process_webhook_events()


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


@dg.op
def requeue_dead_webhook_events(
    context: dg.OpExecutionContext, config: RequeueConfig, billing_db: BillingDatabase
) -> dg.Output[dict[str, list[int]]]:
    """Make the chosen dead webhook rows pending again, with fresh attempts; audited."""
    return requeue_from_config(context, config, billing_db, webhook_queue.DEAD_EVENTS)


@dg.job(tags={"domain": "webhooks"})
def webhook_requeue_job() -> None:
    """Send dead-lettered Stripe events through the queue again (by id, type, or since)."""
    requeue_dead_webhook_events()
