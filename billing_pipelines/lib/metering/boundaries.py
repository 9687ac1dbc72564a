"""Billing periods that start at any instant, on meters that hold one total per UTC day.

Stripe's daily pre-aggregated meter keeps only the newest event received in each UTC day, and
an invoice line counts the events whose timestamps are in its own period. A day that holds a
period boundary B (not at 00:00 UTC) is therefore reported in turns:

1. while the invoice of the period ending at B is still a draft (B + the finalization grace
   period), the day's total is its part before B, timestamped before B: that invoice counts it;
2. once that invoice is final, the day's total becomes its part from B on, timestamped at or
   after B: it replaces the first event for the next period's invoice, and the final invoice
   keeps what it counted.

Before a subscription's first period nothing is billable. A part that could not be reported
before its invoice finalized is late usage, billed on a later invoice as a correction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import partial

from billing_pipelines.lib.usage.warehouse import day_bounds

MAX_VERSION = 86_399  # versions are seconds after midnight (see planning.event_timestamp)


@dataclass(frozen=True)
class SubscriptionTimes:
    """A subscription's start, its end (once ended) and the period boundaries Stripe reports
    (item period starts and ends, trial end, billing cycle anchor)."""

    start: datetime | None
    end: datetime | None
    boundaries: tuple[datetime, ...] = ()


@dataclass(frozen=True)
class Segment:
    """The part of a UTC day inside one period: what one day total can carry."""

    start: datetime
    end: datetime
    billable: bool  # False before the subscription's first period
    closes_period: bool  # True when the period holding it ends at `end`, inside the day

    def versions(self, day: date) -> tuple[int, int]:
        """The value versions whose event timestamps (midnight + version) fall in the part."""
        midnight = day_bounds(day)[0]
        floor = max(1, int((self.start - midnight).total_seconds()))
        ceiling = min(MAX_VERSION, int((self.end - midnight).total_seconds()) - 1)
        return floor, ceiling


def boundaries_in_day(day: date, instants: Iterable[datetime]) -> list[datetime]:
    """Instants strictly inside the UTC day (a boundary at 00:00 needs no split)."""
    start, end = day_bounds(day)
    return sorted({t for t in instants if start < t < end})


def day_segments(day: date, times: SubscriptionTimes) -> list[Segment]:
    """The day cut at every period boundary inside it (and where the subscription starts and
    ends), each part marked billable (inside the subscription) or not."""
    subscription_start, subscription_end = times.start, times.end
    instants = [*times.boundaries, *(t for t in (times.start, times.end) if t is not None)]
    start, end = day_bounds(day)
    cuts = [start, *boundaries_in_day(day, instants), end]
    return [
        Segment(
            start=a,
            end=b,
            billable=(subscription_start is None or a >= subscription_start)
            and (subscription_end is None or b <= subscription_end),
            closes_period=b != end,
        )
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]


def segment_to_report(
    segments: list[Segment], invoice_final: Callable[[datetime], bool]
) -> tuple[Segment | None, list[Segment]]:
    """The part of the day Stripe's day event should carry now, and the billable parts before
    it whose invoice is final (what they billed is settled; a shortfall is late usage).

    The earliest billable part whose invoice can still take usage is reported: a part that
    closes a period can until the invoice of the period ending at its end is final
    (`invoice_final(end)`, Stripe's own answer); the day's last part belongs to a period
    still open.
    """
    closed: list[Segment] = []
    for segment in segments:
        if not segment.billable:
            continue
        if not segment.closes_period or not invoice_final(segment.end):
            return segment, closed
        closed.append(segment)
    return None, closed


@dataclass(frozen=True)
class DayPart:
    """What a tenant's day total carries when a period boundary splits its day: the usage of
    the part now reported (None: nothing can be reported now, leave Stripe as it is) and the
    value versions that stamp the event inside that part."""

    usage: dict[str, int] | None
    versions: tuple[int, int]
    segment: Segment | None = None


def day_parts(
    day: date,
    times: Mapping[str, SubscriptionTimes],
    count: Callable[[str, datetime, datetime], int],
    invoice_final: Callable[[str, datetime], bool],
    *,
    column: str = "billable_queries",
) -> dict[str, DayPart]:
    """Per tenant (keyed as `times`) whose day a boundary splits, the part to report now;
    a tenant whose day holds no boundary is left out (its whole day is reported).

    `count(tenant, start, end)` is the tenant's billable usage in [start, end);
    `invoice_final(tenant, end)` tells whether its period ending at `end` is invoiced for good.
    """
    out: dict[str, DayPart] = {}
    for tenant_id, subscription in sorted(times.items()):
        segments = day_segments(day, subscription)
        if len(segments) == 1:
            # No boundary inside the day: its whole total (a day wholly outside the
            # subscription is counted by no invoice, whatever is sent for it).
            continue
        segment, _ = segment_to_report(segments, partial(invoice_final, tenant_id))
        if segment is None:
            out[tenant_id] = DayPart(None, (1, MAX_VERSION))
        else:
            usage = {column: count(tenant_id, segment.start, segment.end)}
            out[tenant_id] = DayPart(usage, segment.versions(day), segment)
    return out
