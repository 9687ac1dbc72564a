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

# Rows per run. Each run pays a fixed start (a Dagster run: about 0.5 s idle, 3 s on a loaded
# machine) while a handler costs ~0.05-0.3 s, and runs of one queue go one at a time, so a
# burst of N events waits about N/BATCH_SIZE starts plus N handlers: bigger batches drain a
# burst sooner (a 4,000-event onboarding burst: 160 starts at 25, 40 at 100). The cost is the
# last row's wait inside its own run (100 handlers, ~5-30 s) and the blast radius of a row that
# kills its run's process: the rows behind it in the batch wait for the redispatch (5 minutes).
# A row that only raises fails alone (its failure is recorded and the batch goes on). A trickle
# is unaffected: a batch holds only what is due.
BATCH_SIZE = 100

# Rows handed out per tick: 4 runs that go one after another must all claim their rows within
# the redispatch time (5 minutes), or a batch is asked for again; 4 x 100 handlers fit that even
# on a loaded machine.
MAX_BATCHES_PER_TICK = 4


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
