"""How queue-consuming runs start: their executor, their run-queue tag and their sensors' cadence.

The webhook, dunning and email outbox runs are each one op that claims rows with leases; what
a customer waits for is mostly Dagster starting the run, so these settings are chosen together
(README "Run queue and sensor cadence" explains the numbers; dagster.yaml holds the queue side).
"""

import dagster as dg

# Dagster's sensor daemon evaluates sensors in a loop that wakes every 5 s; a sensor ticks on a
# loop when its interval has passed since its last tick started. Any interval under 5 s therefore
# means "every loop", and exactly 5 s means every loop or every other one (the last tick started
# a few milliseconds into the previous loop), so 5 is the one value to avoid.
EVERY_DAEMON_LOOP_SECONDS = 2

# New Stripe events and emails: every loop (the customer-visible path).
WEBHOOK_EVENTS_INTERVAL_SECONDS = EVERY_DAEMON_LOOP_SECONDS
OUTBOX_INTERVAL_SECONDS = EVERY_DAEMON_LOOP_SECONDS
# Dunning steps follow Stripe's payment retries, which are hours or days apart, and the step's
# own email then waits for the outbox sensor: 30 s costs nothing a customer sees and saves five
# of every six scans of the invoices for due steps.
DUNNING_INTERVAL_SECONDS = 30

# The run tag dagster.yaml's run queue limits per value: one run per queue at a time, so two
# consumers of one queue never split its Stripe budget or wait on each other's row locks.
QUEUE_TAG = "billing/queue"
WEBHOOK_EVENTS_QUEUE = "webhook_events"
DUNNING_QUEUE = "dunning"
OUTBOX_QUEUE = "notification_outbox"

# One process per run: the step runs inside the run's own process instead of a second
# interpreter that imports Dagster, loads the definitions and opens the resources again. Safe
# for these jobs: each is a single op (nothing to parallelise) and op retries behave the same in
# process. A process that dies now takes the run with it instead of failing only the step: run
# monitoring fails the run, run retries launch it again (dagster.yaml), and its claimed rows are
# taken over once their lease expires, as for any run that died.
QUEUE_RUN_EXECUTOR: dg.ExecutorDefinition = dg.in_process_executor


def queue_job_tags(domain: str, queue: str) -> dict[str, str]:
    """A queue-consuming job's tags: its domain and the queue it drains (limited per queue)."""
    return {"domain": domain, QUEUE_TAG: queue}
