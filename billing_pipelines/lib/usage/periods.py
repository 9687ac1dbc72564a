"""Billable queries over any half-open interval of instants, the way an invoice line counts them.

A billing period starts at any instant (sign-up, trial end, resume, plan change), so the truth
for an invoice line is never a sum of whole UTC days: it is the distinct query ids whose first
event falls inside the line's own [start, end). A query id logged again later (the RAG API's
cache, a retry across midnight) counts once, at its first event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from billing_pipelines.lib.usage.warehouse import DUPLICATE_HORIZON, day_bounds

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

INTERVAL_QUERIES_SQL = """
SELECT toInt64(countIf(first_seen >= {start:DateTime64(6, 'UTC')}))
FROM
(
    SELECT query_id, min(timestamp) AS first_seen
    FROM usage_events
    WHERE tenant_id = {tenant:String} AND event_type = 'query'
      AND timestamp >= {lookback:DateTime64(6, 'UTC')} AND timestamp < {end:DateTime64(6, 'UTC')}
    GROUP BY query_id
)
"""


def interval_queries(client: Client, tenant_id: str, start: datetime, end: datetime) -> int:
    """Distinct billable query ids of a tenant whose first event is in [start, end)."""
    if end <= start:
        return 0
    result = client.query(
        INTERVAL_QUERIES_SQL,
        parameters={
            "tenant": tenant_id,
            "start": start.astimezone(UTC),
            "end": end.astimezone(UTC),
            "lookback": (start - DUPLICATE_HORIZON).astimezone(UTC),
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
    queries: int  # distinct query ids first seen in [start, end)
    head: int  # of those, first seen in [start, first midnight) when start is not 00:00 UTC
    tail: int  # of those, first seen in [last midnight, end) when end is not 00:00 UTC
    head_before: int  # first seen on the start's day before the start instant (not this period)
    tail_after: int  # first seen on the end's day at or after the end instant (next period)

    method: str = "distinct query ids by first event timestamp in [start, end)"

    @property
    def starts_at_midnight(self) -> bool:
        """True when the period starts at 00:00 UTC (no partial first day)."""
        return midnight_on_or_before(self.start) == self.start

    @property
    def ends_at_midnight(self) -> bool:
        """True when the period ends at 00:00 UTC (no partial last day)."""
        return midnight_on_or_before(self.end) == self.end


def period_truth(client: Client, tenant_id: str, start: datetime, end: datetime) -> PeriodTruth:
    """The line's truth by event timestamps, plus the boundary days split at its instants."""
    queries = interval_queries(client, tenant_id, start, end)
    first_midnight = min(midnight_on_or_after(start), end)
    last_midnight = max(midnight_on_or_before(end), first_midnight)
    head = tail = head_before = tail_after = 0
    if first_midnight != start:
        head = interval_queries(client, tenant_id, start, first_midnight)
        head_before = interval_queries(client, tenant_id, midnight_on_or_before(start), start)
    if last_midnight != end:
        tail = interval_queries(client, tenant_id, last_midnight, end)
        tail_after = interval_queries(client, tenant_id, end, midnight_on_or_after(end))
    return PeriodTruth(start, end, queries, head, tail, head_before, tail_after)
