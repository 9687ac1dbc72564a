"""Billable queries over any half-open interval of instants, the way an invoice line counts them.

A billing period starts at any instant (sign-up, trial end, resume, plan change), so the truth
for an invoice line is never a sum of whole UTC days: it is the query ids whose billing instant
falls inside the line's own [start, end). That instant follows daily usage's rule, so the push
(whole days and the parts of split days) and the audit count the same ids: an id is billed on a
UTC day it was queried unless the tenant logged it (as any kind of event) the day before, at its
first query event of that day. A copy logged later (the RAG API's cache, a retry across
midnight) is not billed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from billing_pipelines.lib.usage.warehouse import DUPLICATE_HORIZON, day_bounds

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# The day rule of daily usage, at an instant: a query id is billed on a UTC day when the tenant
# logged it as a query that day and as no event of any kind (query or ingest) on the day before,
# and it is billed at its first query event of that day. An interval counts the billing instants
# inside it, so the parts of a day split at any instants add up to the day's total
# (DAILY_USAGE_SQL), and a period is the sum of its parts and whole days: what the push sends.
# The scan starts at the midnight before the interval's first day: the whole day before is its
# look-back, whatever the interval's time of day; events from `end` on cannot move an instant
# inside the interval.
INTERVAL_QUERIES_SQL = """
SELECT toInt64(countIf(
    first_query >= {start:DateTime64(6, 'UTC')} AND NOT has(logged_days, day - 1)
))
FROM
(
    SELECT logged_days, instant.1 AS day, instant.2 AS first_query
    FROM
    (
        SELECT query_id,
               groupArray(day)                             AS logged_days,
               groupArrayIf((day, first_query), queried)   AS firsts
        FROM
        (
            SELECT query_id, toDate(timestamp, 'UTC')          AS day,
                   countIf(event_type = 'query') > 0           AS queried,
                   minIf(timestamp, event_type = 'query')      AS first_query
            FROM usage_events
            WHERE tenant_id = {tenant:String}
              AND timestamp >= {lookback:DateTime64(6, 'UTC')}
              AND timestamp < {end:DateTime64(6, 'UTC')}
            GROUP BY query_id, day
        )
        GROUP BY query_id
    )
    ARRAY JOIN firsts AS instant
)
"""


def interval_queries(client: Client, tenant_id: str, start: datetime, end: datetime) -> int:
    """Billable query ids of a tenant whose billing instant (first query event of the day,
    not logged the day before) is in [start, end)."""
    if end <= start:
        return 0
    result = client.query(
        INTERVAL_QUERIES_SQL,
        parameters={
            "tenant": tenant_id,
            "start": start.astimezone(UTC),
            "end": end.astimezone(UTC),
            "lookback": midnight_on_or_before(start) - DUPLICATE_HORIZON,
        },
    )
    return int(result.result_rows[0][0]) if result.result_rows else 0


def midnight_on_or_after(instant: datetime) -> datetime:
    """The first 00:00 UTC at or after an instant."""
    start, end = day_bounds(instant.astimezone(UTC).date())
    return start if start == instant else end


def midnight_on_or_before(instant: datetime) -> datetime:
    """The last 00:00 UTC at or before an instant."""
    return day_bounds(instant.astimezone(UTC).date())[0]


@dataclass(frozen=True)
class PeriodTruth:
    """What an invoice line should bill, from raw events, and its boundary-day parts."""

    start: datetime
    end: datetime
    queries: int  # query ids whose billing instant is in [start, end)
    head: int  # of those, billed in [start, first midnight) when start is not 00:00 UTC
    tail: int  # of those, billed in [last midnight, end) when end is not 00:00 UTC
    head_before: int  # billed on the start's day before the start instant (not this period)
    tail_after: int  # billed on the end's day at or after the end instant (next period)

    method: str = (
        "distinct query ids by billing instant in [start, end): first query event of a UTC "
        "day, unless logged the day before"
    )

    @property
    def starts_at_midnight(self) -> bool:
        """True when the period starts at 00:00 UTC (no partial first day)."""
        return midnight_on_or_before(self.start) == self.start

    @property
    def ends_at_midnight(self) -> bool:
        """True when the period ends at 00:00 UTC (no partial last day)."""
        return midnight_on_or_before(self.end) == self.end


def truth_intervals(start: datetime, end: datetime) -> dict[str, tuple[datetime, datetime]]:
    """What a line's truth counts, by PeriodTruth field: its period, and the parts of the
    boundary days it splits (only where a boundary is not at 00:00 UTC)."""
    first_midnight = min(midnight_on_or_after(start), end)
    last_midnight = max(midnight_on_or_before(end), first_midnight)
    intervals = {"queries": (start, end)}
    if first_midnight != start:
        intervals["head"] = (start, first_midnight)
        intervals["head_before"] = (midnight_on_or_before(start), start)
    if last_midnight != end:
        intervals["tail"] = (last_midnight, end)
        intervals["tail_after"] = (end, midnight_on_or_after(end))
    return intervals


def period_truth(client: Client, tenant_id: str, start: datetime, end: datetime) -> PeriodTruth:
    """The line's truth by event timestamps, plus the boundary days split at its instants."""
    counts = {
        name: interval_queries(client, tenant_id, low, high)
        for name, (low, high) in truth_intervals(start, end).items()
    }
    return truth_from_counts(start, end, counts)


def truth_from_counts(start: datetime, end: datetime, counts: dict[str, int]) -> PeriodTruth:
    """A PeriodTruth from the counts of its `truth_intervals` (an interval not counted is 0)."""
    return PeriodTruth(
        start,
        end,
        counts["queries"],
        counts.get("head", 0),
        counts.get("tail", 0),
        counts.get("head_before", 0),
        counts.get("tail_after", 0),
    )
