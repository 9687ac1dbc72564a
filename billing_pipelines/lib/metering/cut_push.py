"""A tenant's usage up to a lifecycle instant, in Stripe before the action changes its prices.

A plan change or an immediate cancellation fixes the old part of the period at the instant it
happens, but the nightly push sends a day only after it ends: without this, the day's usage
before a 17:30 change would reach Stripe after the old part was billed (so it would land on
the new price, or nowhere after a cancellation). So just before the action, the tenant's day
so far is pushed as the day's event, timestamped before the instant, through the same ledger
as every push (pending row before the call, confirmed after): the old part counts it, and the
next night's push moves the day's event to the part from the instant on (`cuts`). Days of the
current period the nightly push has not reached yet (an action just after midnight) are
pushed whole first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from billing_pipelines.lib.metering import ledger
from billing_pipelines.lib.metering.boundaries import MAX_VERSION
from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    FAILED,
    DayTotal,
    MeterReport,
    plan_day,
)
from billing_pipelines.lib.metering.push import Meter, Transaction
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe import periods as stripe_periods
from billing_pipelines.lib.stripe.meters import RetryableStripeError, SendOutcome
from billing_pipelines.lib.usage.warehouse import day_bounds

if TYPE_CHECKING:
    from billing_pipelines.lib.stripe.client import StripeClient

# Stripe accepts meter events up to 35 days old: earlier days are the nightly push's business.
WINDOW_DAYS = 35

# The usage column an interval of instants can be counted for (distinct billable query ids).
COUNTED_COLUMN = "billable_queries"

Count = Callable[[str, datetime, datetime], int]  # (tenant, start, end) -> billable usage


class CutPushError(Exception):
    """The usage up to the instant could not be reported: the action must not go ahead."""


@dataclass
class CutPushResult:
    """What was pushed before a lifecycle action: per day, the reported value."""

    instant: datetime
    reported: dict[date, int] = field(default_factory=dict)  # day -> value now in Stripe
    sent: int = 0  # meter events this push sent (0: Stripe already had every value)
    left: list[str] = field(default_factory=list)  # parts left to the nightly push, and why


def day_part_before(
    day: date, instant: datetime, since: datetime | None
) -> tuple[datetime, datetime, tuple[int, int]] | None:
    """The part of a day after `since` (the current part's start) and before the instant, and
    the value versions that stamp its event inside it; None when the part is empty."""
    midnight, next_midnight = day_bounds(day)
    start = max(midnight, since) if since is not None else midnight
    end = min(next_midnight, instant)
    if end <= start:
        return None
    floor = max(1, int((start - midnight).total_seconds()))
    ceiling = min(MAX_VERSION, int((end - midnight).total_seconds()) - 1)
    if ceiling < floor:
        return None
    return start, end, (floor, ceiling)


class CutPush:
    """Pushes one tenant's usage up to an instant, exactly once per value version."""

    def __init__(
        self,
        *,
        transaction: Transaction,
        client: StripeClient,
        meters: list[Meter],
        count: Count,
        run_id: str,
        log: logging.Logger,
        requests_per_second: float = 10.0,
    ) -> None:
        self._transaction = transaction
        self._client = client
        self._meters = [m for m in meters if m[2] == COUNTED_COLUMN]
        self._count = count
        self._run_id = run_id
        self._log = log
        self._rate = requests_per_second

    def push(
        self,
        tenant_id: str,
        customer_id: str,
        subscription_id: str,
        instant: datetime,
        period_start: datetime | None,
        last_cut: datetime | None = None,
    ) -> CutPushResult:
        """Report the tenant's usage of the current part of its period before `instant`: from
        the period start, or from an earlier cut in the period (its old part is settled)."""
        result = CutPushResult(instant)
        since = period_start
        if last_cut is not None and (since is None or last_cut > since):
            since = last_cut
        today = instant.date()
        first = today - timedelta(days=WINDOW_DAYS - 1)
        if since is not None:
            first = max(first, since.date())
        day = first
        while day <= today:
            self._push_day(
                tenant_id, customer_id, subscription_id, day, instant, since, period_start, result
            )
            day += timedelta(days=1)
        return result

    def _push_day(
        self,
        tenant_id: str,
        customer_id: str,
        subscription_id: str,
        day: date,
        instant: datetime,
        since: datetime | None,
        period_start: datetime | None,
        result: CutPushResult,
    ) -> None:
        part = day_part_before(day, instant, since)
        if part is None:
            return
        start, end, versions = part
        midnight, next_midnight = day_bounds(day)
        with self._transaction() as lock_conn:
            # The nightly push of the same day waits for this one (and the other way round).
            ledger.lock_day(lock_conn, day)
            with self._transaction() as conn:
                latest = {
                    key: entry
                    for key, entry in ledger.latest_entries(conn, day).items()
                    if key[0] == tenant_id
                }
            if end == next_midnight and latest:
                return  # an earlier whole day the nightly push already reported
            if start != midnight and day != instant.date():
                # The part started inside this earlier day: the day is split, and its parts
                # are reported in turn by the nightly push.
                result.left.append(f"{day}: split at {start:%H:%M:%S}, left to the nightly push")
                return
            renewed_today = start == period_start and start != midnight
            if renewed_today and not stripe_periods.period_invoice_final(
                self._client, subscription_id, start
            ):
                # The day's part before the period start is still to be reported for the
                # previous period's draft invoice, in turn, with lower versions (versions only
                # grow): the part from the period start cannot be reported before it.
                result.left.append(
                    f"{day}: the part before the period start is not settled yet; the part "
                    f"from {start:%H:%M:%S} to {end:%H:%M:%S} is left to the usage audit"
                )
                return
            value = self._count(tenant_id, start, end)
            totals = [
                DayTotal(tenant_id, metric, value, customer_id, event_name)
                for metric, event_name, _ in self._meters
            ]
            plan = plan_day(day, totals, latest, {tenant_id: versions})
            if plan.no_version_left:
                raise CutPushError(
                    f"{tenant_id} on {day}: no value version left before {end:%H:%M:%S}"
                )
            with self._transaction() as conn:
                fresh = ledger.record_pending(conn, plan.new, self._run_id)
            to_send = [*plan.resend, *fresh]
            self._send(to_send, result)
            result.reported[day] = value

    def _send(self, reports: list[MeterReport], result: CutPushResult) -> None:
        outcomes: list[tuple[MeterReport, SendOutcome]] = []
        exhausted = pacing.run_paced(
            reports,
            lambda report: stripe_meters.send_meter_event(self._client, report),
            lambda report, outcome: outcomes.append((report, outcome)),
            limiter=pacing.RateLimiter(self._rate),
            retryable=RetryableStripeError,
            workers=1,
        )
        for report, error in exhausted:
            outcomes.append((report, SendOutcome(FAILED, error=f"retries exhausted: {error}")))
        with self._transaction() as conn:
            ledger.record_outcomes(
                conn,
                [(r.ledger_id or 0, o.status, o.error) for r, o in outcomes],
            )
        failed = [
            f"{r.identifier}: {o.status} {o.error or ''}"
            for r, o in outcomes
            if o.status != DELIVERED
        ]
        if failed:
            # The rows stay in the ledger; the nightly push re-sends them with the same ids.
            raise CutPushError("usage up to the change not reported: " + "; ".join(failed))
        result.sent += sum(1 for _, o in outcomes if not o.duplicate)
