"""The Stripe side of meter reporting: send one meter event, read back day totals.

This module and `stripe_catalog` are the only places that know Stripe's Billing Meters API;
another billing backend would replace them and keep the ledger and the planning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    FAILED,
    OUT_OF_WINDOW,
    MeterReport,
)
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.stripe.pacing import RateLimiter
from billing_pipelines.lib.usage.warehouse import day_bounds

if TYPE_CHECKING:
    import stripe


class RetryableStripeError(Exception):
    """A 429, 5xx or network failure: the same request may be sent again."""


@dataclass(frozen=True)
class SendOutcome:
    """How Stripe answered one meter event (after retries)."""

    status: str  # delivered | failed | out_of_window
    duplicate: bool = False  # Stripe already had this identifier: delivered earlier
    error: str | None = None


def is_duplicate_identifier(exc: stripe.StripeError) -> bool:
    """Stripe's answer to a meter event whose identifier it already has: it was delivered."""
    if exc.http_status != 400:
        return False
    param = getattr(exc.error, "param", None) if exc.error is not None else None
    message = str(exc.user_message or "")
    return param == "identifier" and "already exists with identifier" in message


# Rate limits, Stripe's 5xx and network errors; never a 4xx decision.
is_retryable = stripe_api.is_transient


def event_limiter(client: stripe.StripeClient, per_second: float) -> RateLimiter | None:
    """The limiter a push of meter events at `per_second` waits on before each event, or None
    when the client's own budget already holds meter events to that rate or less: one limiter
    per event instead of two that say the same (each acquisition costs CPU at 1,000/s)."""
    budget = stripe_api.budget_of(client)
    if budget is not None and budget.meter_events_per_second <= per_second:
        return None
    return RateLimiter(per_second)


def send_meter_event(client: stripe.StripeClient, report: MeterReport) -> SendOutcome:
    """Send one day total; raises RetryableStripeError when the same call should be retried."""
    import stripe

    try:
        # The SDK's raw request: the same encoding, headers, retries and errors as
        # `meter_events.create`, without turning the answer into a StripeObject that is never
        # read (a third of the SDK's own CPU per event at 1,000 events/s).
        answer = client.raw_request(
            "post",
            stripe_api.METER_EVENTS_PATH,
            event_name=report.event_name,
            identifier=report.identifier,
            timestamp=report.timestamp,
            payload={
                "stripe_customer_id": report.stripe_customer_id,
                "value": str(report.value),
            },
            # The same key on every retry of this version: Stripe replays instead of re-applying.
            idempotency_key=f"meter-event-{report.identifier}",
        )
    except stripe.StripeError as exc:
        if is_duplicate_identifier(exc):
            return SendOutcome(DELIVERED, duplicate=True)
        if is_retryable(exc):
            raise RetryableStripeError(_describe(exc)) from exc
        if exc.code == "timestamp_too_far_in_past":
            return SendOutcome(OUT_OF_WINDOW, error=_describe(exc))
        return SendOutcome(FAILED, error=_describe(exc))
    # A replay of our own earlier request (same idempotency key): it was delivered before.
    replayed = answer.headers.get("Idempotent-Replayed") == "true"
    return SendOutcome(DELIVERED, duplicate=replayed)


def _describe(exc: stripe.StripeError) -> str:
    # user_message is Stripe's message; it never carries the API key.
    return f"{exc.http_status} {exc.code or type(exc).__name__}: {exc.user_message or ''}".strip()


@stripe_api.retry_reads
def active_meter_ids(client: stripe.StripeClient) -> dict[str, str]:
    """Active meter ids by event_name."""
    listed = client.v1.billing.meters.list({"status": "active", "limit": 100})
    return {m.event_name: m.id for m in listed.auto_paging_iter()}


@stripe_api.retry_reads
def daily_totals(
    client: stripe.StripeClient, meter_id: str, customer_id: str, first: date, last: date
) -> dict[date, Decimal]:
    """Stripe's aggregated meter value per UTC day from first to last, in one paged list.

    One request per customer and period instead of one per day: an audit of a month of many
    tenants would otherwise spend ~31 requests of the account's rate limit on each tenant.
    """
    start, _ = day_bounds(first)
    _, end = day_bounds(last)
    summaries = client.v1.billing.meters.event_summaries.list(
        meter_id,
        {
            "customer": customer_id,
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
            "value_grouping_window": "day",
            "limit": 100,
        },
    )
    totals: dict[date, Decimal] = {}
    for summary in summaries.auto_paging_iter():
        day = datetime.fromtimestamp(summary.start_time, UTC).date()
        totals[day] = totals.get(day, Decimal(0)) + Decimal(str(summary.aggregated_value))
    return totals


# Reads are safe to repeat: a 429 (the SDK does not retry those) waits and asks again, so an
# audit of many tenants shares the account's rate limit instead of failing on it.
@stripe_api.retry_reads
def day_total(client: stripe.StripeClient, meter_id: str, customer_id: str, day: date) -> Decimal:
    """Stripe's aggregated meter value for one customer over one UTC day."""
    start, end = day_bounds(day)
    summaries = client.v1.billing.meters.event_summaries.list(
        meter_id,
        {
            "customer": customer_id,
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
        },
    )
    return sum((Decimal(str(s.aggregated_value)) for s in summaries.data), Decimal(0))
