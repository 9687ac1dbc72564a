"""One day's meter push: plan it from the ledger, send it paced, confirm it in batches.

The order is what makes it exactly-once: every ledger row is committed (pending) before its
call to Stripe, and confirmed only after Stripe answered. A crash in between leaves the row
pending; the next run re-sends it with the same identifier and Stripe recognises it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.metering.boundaries import DayPart
from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    FAILED,
    OUT_OF_WINDOW,
    BillingAccount,
    DayPlan,
    DesiredDay,
    MeterReport,
    RefusedValue,
    desired_totals,
    plan_day,
    screen_usage,
)
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe.meters import RetryableStripeError, SendOutcome

if TYPE_CHECKING:
    from billing_pipelines.lib.stripe.client import ClientSpec, StripeClient

# Ledger confirmations are flushed every this many outcomes or seconds, whichever comes first.
# At 1,000 events/s the quarter second binds (about 250 rows a transaction, four a second); a
# crash leaves at most that many delivered rows pending, re-sent with the same identifiers.
CONFIRM_BATCH = 250

CONFIRM_EVERY_SECONDS = 0.25

Meter = tuple[str, str, str]  # (metric, meter event name, usage column)

Transaction = Callable[[], AbstractContextManager[ledger.Conn]]

Confirmation = tuple[int, str, str | None]  # (ledger id, outcome status, error)


@dataclass(frozen=True)
class ShardTarget:
    """Where a shard's process sends and confirms: Stripe's client settings, the ledger's URL."""

    stripe: ClientSpec
    database_url: str = field(repr=False)  # carries the database password


# Per tenant whose day a period boundary splits: the part to report now (boundaries.day_parts).
PartsOf = Callable[[date, Mapping[str, BillingAccount]], Mapping[str, DayPart]]


@dataclass(frozen=True)
class Pace:
    """How fast a push goes: requests per second, worker threads, attempts per event, and
    how many processes share them (each shard sends its tenants at 1/shards of the rate)."""

    requests_per_second: float
    workers: int = 8
    retry_attempts: int = 6
    progress_every_seconds: float = 10.0
    shards: int | None = 1  # None: chosen from the rate and the day's events (shards_for)

    def share(self, shards: int) -> Pace:
        """One of `shards` shards' pace: 1/shards of the rate and of the workers (at least one)."""
        return replace(
            self,
            requests_per_second=self.requests_per_second / shards,
            workers=max(1, math.ceil(self.workers / shards)),
            shards=1,
        )


@dataclass
class PushPlan:
    """What one day's push will do, and the totals and refusals it was decided from."""

    day: date
    plan: DayPlan
    desired: DesiredDay
    refused: list[RefusedValue]


@dataclass
class Outcomes:
    """How Stripe answered this run's meter events, counted by outcome."""

    delivered: int = 0
    failed: int = 0
    out_of_window: int = 0
    duplicate: int = 0  # delivered in an earlier run: Stripe already had the identifier

    def count(self, outcome: SendOutcome) -> None:
        """Add one answer to the counts."""
        if outcome.status == DELIVERED:
            self.delivered += 1
        elif outcome.status == FAILED:
            self.failed += 1
        elif outcome.status == OUT_OF_WINDOW:
            self.out_of_window += 1
        else:
            raise ValueError(f"not an outcome status: {outcome.status}")
        self.duplicate += outcome.duplicate

    @property
    def sent(self) -> int:
        """Events this run added to Stripe (deliveries Stripe did not already have)."""
        return self.delivered - self.duplicate

    def add(self, other: Outcomes) -> None:
        """Add another sender's counts (a shard's) to these."""
        self.delivered += other.delivered
        self.failed += other.failed
        self.out_of_window += other.out_of_window
        self.duplicate += other.duplicate


@dataclass
class SendTally:
    """What one sender (the run's process, or one shard's) did with its meter events."""

    outcomes: Outcomes = field(default_factory=Outcomes)
    retried: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (identifier, why it failed)

    def add(self, other: SendTally) -> None:
        """Add another sender's tally to this one."""
        self.outcomes.add(other.outcomes)
        self.retried += other.retried
        self.errors.extend(other.errors)


class EventSender:
    """Sends meter events paced and retried, and confirms each one's ledger row in batches.

    The ledger rows exist (pending) before `send` is called; a row is confirmed only after
    Stripe answered its event, so a sender that dies leaves its unanswered rows pending.
    """

    def __init__(self, client: StripeClient, transaction: Transaction) -> None:
        self._client = client
        self._transaction = transaction
        self._tally = SendTally()
        self._confirmations = ConfirmBuffer(self._write_confirmations)

    def send(
        self,
        reports: list[MeterReport],
        pace: Pace,
        on_progress: Callable[[pacing.Progress], object] = lambda p: None,
    ) -> SendTally:
        """Send every report at `pace` (one process), confirm the outcomes, count them."""
        exhausted = pacing.run_paced(
            reports,
            self._send,
            self._confirm,
            limiter=stripe_meters.event_limiter(self._client, pace.requests_per_second),
            retryable=RetryableStripeError,
            retry=pacing.RetryPolicy(attempts=pace.retry_attempts),
            workers=pace.workers,
            on_progress=on_progress,
            progress_every_seconds=pace.progress_every_seconds,
        )
        for report, error in exhausted:
            self._confirm(report, SendOutcome(FAILED, error=f"retries exhausted: {error}"))
        self._confirmations.flush()
        return self._tally

    def _send(self, report: MeterReport) -> SendOutcome:
        """One meter event (on a worker thread); a retryable failure is counted and re-raised."""
        try:
            return stripe_meters.send_meter_event(self._client, report)
        except RetryableStripeError:
            self._tally.retried += 1  # a lost race for a slot is not worth a log line each
            raise

    def _confirm(self, report: MeterReport, outcome: SendOutcome) -> None:
        """Count one answer (on the calling thread) and queue its ledger confirmation."""
        assert report.ledger_id is not None
        self._tally.outcomes.count(outcome)
        if outcome.status == FAILED:
            self._tally.errors.append((report.identifier, outcome.error or ""))
        self._confirmations.add(report.ledger_id, outcome)

    def _write_confirmations(self, rows: list[Confirmation]) -> None:
        with self._transaction() as conn:
            ledger.record_outcomes(conn, rows)


class ConfirmBuffer:
    """Outcomes waiting for their ledger rows, written every `batch` outcomes or `every_seconds`.

    Batching keeps the push off the database's critical path; a crash leaves the unwritten
    rows pending, and a re-run re-sends them with the same identifiers (no double count).
    """

    def __init__(
        self,
        write: Callable[[list[Confirmation]], None],
        *,
        batch: int = CONFIRM_BATCH,
        every_seconds: float = CONFIRM_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._batch = batch
        self._every_seconds = every_seconds
        self._clock = clock
        self._rows: list[Confirmation] = []
        self._last_flush = clock()

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, ledger_id: int, outcome: SendOutcome) -> None:
        """Queue one row's outcome; write the queue when the batch is full or overdue."""
        self._rows.append((ledger_id, outcome.status, outcome.error))
        due = self._clock() - self._last_flush >= self._every_seconds
        if len(self._rows) >= self._batch or due:
            self.flush()

    def flush(self) -> None:
        """Write every queued outcome now (an empty queue still opens its write)."""
        self._write(self._rows)
        self._rows = []
        self._last_flush = self._clock()


@dataclass
class PushResult:
    """What a day's push did, in the counts the run reports."""

    day: date
    attempted: int  # meter events this run sent (new versions and re-sends)
    outcomes: Outcomes
    unchanged: int
    stranded: list[dict[str, Any]]  # newest versions Stripe refused as too old
    desired: DesiredDay
    refused: list[RefusedValue]
    meters: list[Meter]
    requests_per_second: float
    push_seconds: float
    retried_requests: int = 0
    shards: int = 1

    @property
    def totals(self) -> dict[str, int]:
        """The day's total per metric over every billable tenant."""
        return {
            metric: sum(t.value for t in self.desired.totals if t.metric == metric)
            for metric, _, _ in self.meters
        }

    @property
    def billable_tenants(self) -> int:
        """Tenants with a total Stripe should hold for the day."""
        return len({t.tenant_id for t in self.desired.totals})

    def problems(self) -> list[str]:
        """Why the run must fail (refused values, failed events), one message each; [] if none."""
        problems = [refused_message(self.day, self.refused)] if self.refused else []
        if self.outcomes.failed:
            # Failed rows stay in the ledger and are re-sent with the same identifier next run.
            problems.append(
                f"{self.outcomes.failed} of {self.attempted} meter events for {self.day} "
                "failed; re-run the partition to retry them (same identifiers, no double count)"
            )
        return problems


def refused_message(day: date, refused: list[RefusedValue], limit: int = 20) -> str:
    """The operator's message for refused values: how many, whose, and what to fix."""
    tenants = sorted({r.tenant_id for r in refused})
    lines = [r.describe() for r in refused[:limit]]
    if len(refused) > limit:
        lines.append(f"... and {len(refused) - limit} more")
    return (
        f"{len(refused)} stored usage value(s) for {day} refused: nothing was sent for "
        f"{len(tenants)} tenant(s), the others were pushed; fix daily_tenant_usage and "
        "re-run the partition:\n" + "\n".join(lines)
    )


class MeterPush:
    """One UTC day of stored usage into Stripe's meters, exactly once per value version.

    One instance is one push. The caller holds the day's lock (`ledger.lock_day`) around
    `plan` and `push`, so no other reporter of the same day interleaves.
    """

    def __init__(
        self,
        day: date,
        *,
        transaction: Transaction,
        client: StripeClient,
        meters: list[Meter],
        ceiling: int,
        run_id: str,
        log: logging.Logger,
        parts: PartsOf | None = None,
        shard_target: ShardTarget | None = None,
    ) -> None:
        self.day = day
        self._parts = parts
        self._shard_target = shard_target
        self.meters = meters
        self.ceiling = ceiling
        self._transaction = transaction
        self._client = client
        self._run_id = run_id
        self._log = log

    def plan(self) -> PushPlan:
        """Read the ledger and stored usage: what to send, what is settled, what is refused."""
        with self._transaction() as conn:
            latest = ledger.latest_entries(conn, self.day)
            # Values that cannot be a day's usage (negative, above the ceiling, not a whole
            # number) are never sent; those tenants are held as Stripe has them, the others
            # are pushed (one bad row must not leave every tenant unbilled at period end).
            usage, refused = screen_usage(
                self.day,
                ledger.stored_usage(conn, self.day),
                [column for _, _, column in self.meters],
                self.ceiling,
            )
            held = {r.tenant_id for r in refused}
            accounts = ledger.billing_accounts(conn)
            # A day split by a period boundary carries one part at a time (boundaries.py).
            parts = self._parts(self.day, accounts) if self._parts else {}
            versions: dict[str, tuple[int, int]] = {}
            for tenant_id, part in parts.items():
                if tenant_id in held:
                    continue
                if part.usage is None:
                    held.add(tenant_id)
                    usage.pop(tenant_id, None)
                else:
                    usage[tenant_id] = {**usage.get(tenant_id, {}), **part.usage}
                    versions[tenant_id] = part.versions
            desired = desired_totals(usage, accounts, self.meters, latest, held=held)
            plan = plan_day(self.day, desired.totals, latest, versions)
        for refusal in refused:
            self._log.error("refused, not sent: %s", refusal.describe())
        for tenant_id, metric in plan.no_version_left:
            self._log.error(
                "%s %s on %s: no value version left inside the part of the day now reported; "
                "the usage audit shows the difference",
                tenant_id,
                metric,
                self.day,
            )
        return PushPlan(self.day, plan, desired, refused)

    def push(self, planned: PushPlan, pace: Pace) -> PushResult:
        """Write the pending rows, send every event paced and retried, confirm the outcomes."""
        plan = planned.plan
        # The ledger rows exist (committed) before any call to Stripe.
        with self._transaction() as conn:
            fresh = ledger.record_pending(conn, plan.new, self._run_id)
        to_send = [*plan.resend, *fresh]
        self._log.info(
            "%s: %d meter events to send (%d new versions, %d unconfirmed re-sends), "
            "%d unchanged, at most %.0f requests/s",
            self.day,
            len(to_send),
            len(fresh),
            len(plan.resend),
            plan.unchanged,
            pace.requests_per_second,
        )
        started = time.monotonic()
        from billing_pipelines.lib.metering import shards

        count = pace.shards or shards.shards_for(pace.requests_per_second, len(to_send))
        if count > 1:
            if self._shard_target is None:
                raise ValueError("a sharded push needs the database and Stripe settings")
            tally = shards.send_sharded(to_send, pace, count, self._shard_target, self._log)
        else:
            tally = EventSender(self._client, self._transaction).send(to_send, pace, self._progress)
        for identifier, error in tally.errors:
            self._log.error("%s: %s", identifier, error)
        push_seconds = time.monotonic() - started
        with self._transaction() as conn:
            stranded = ledger.out_of_window(conn, self.day)
        return PushResult(
            day=self.day,
            attempted=len(to_send),
            outcomes=tally.outcomes,
            unchanged=plan.unchanged,
            stranded=stranded,
            desired=planned.desired,
            refused=planned.refused,
            meters=self.meters,
            requests_per_second=pace.requests_per_second,
            push_seconds=push_seconds,
            retried_requests=tally.retried,
            shards=count,
        )

    def _progress(self, progress: pacing.Progress) -> None:
        self._log.info(progress.line(f"meter events for {self.day}"))
