"""The usage audit's truth for every invoice line at once: `period_truth`, read in a few queries.

Counting each line alone costs one warehouse query per line and boundary part, each scanning its
tenant's period again; at 500 tenants that was most of the reconciliation run. Here a slice of
tenants is read in one query: every billing instant of the slice's tenants over the union of
their lines' windows, then counted per interval. The instants are those of `interval_queries`
(same rule, same look-back), so each interval's count is the same number.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from billing_pipelines.lib.reconciliation.usage_audit import (
    EVENTS_PER_QUERY,
    TENANT_EVENTS_SQL,
    tenant_slices,
)
from billing_pipelines.lib.usage.periods import (
    PeriodTruth,
    midnight_on_or_before,
    truth_from_counts,
    truth_intervals,
)
from billing_pipelines.lib.usage.warehouse import DUPLICATE_HORIZON

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

Period = tuple[str, datetime, datetime]  # (tenant_id, start, end) of an invoice line

# The day rule of `INTERVAL_QUERIES_SQL` for many tenants and intervals: every billing instant
# (first query event of a UTC day, the id not logged the day before) of the slice's tenants from
# the earliest look-back to the latest end, joined to the intervals by tenant and counted inside
# each. A wider scan than one interval's cannot move an instant inside it: an instant depends on
# its own day and the day before only, and an instant at or after an interval's end is not in it.
PERIOD_QUERIES_SQL = """
SELECT l.interval, toInt64(countIf(b.billed_at >= l.low AND b.billed_at < l.high))
FROM
(
    SELECT tenant_id, instant.2 AS billed_at
    FROM
    (
        SELECT tenant_id, query_id,
               groupArray(day)                             AS logged_days,
               groupArrayIf((day, first_query), queried)   AS firsts
        FROM
        (
            SELECT tenant_id, query_id, toDate(timestamp, 'UTC')  AS day,
                   countIf(event_type = 'query') > 0             AS queried,
                   minIf(timestamp, event_type = 'query')        AS first_query
            FROM usage_events
            WHERE tenant_id IN {tenants:Array(String)}
              AND timestamp >= {lookback:DateTime64(6, 'UTC')}
              AND timestamp < {end:DateTime64(6, 'UTC')}
            GROUP BY tenant_id, query_id, day
        )
        GROUP BY tenant_id, query_id
    )
    ARRAY JOIN firsts AS instant
    WHERE NOT has(logged_days, instant.1 - 1)
) AS b
INNER JOIN
(
    SELECT x.1 AS interval, x.2 AS tenant, x.3 AS low, x.4 AS high
    FROM
    (
        SELECT arrayJoin(arrayZip(
            {intervals:Array(UInt32)}, {interval_tenants:Array(String)},
            {lows:Array(DateTime64(6, 'UTC'))}, {highs:Array(DateTime64(6, 'UTC'))}
        )) AS x
    )
) AS l ON b.tenant_id = l.tenant
GROUP BY l.interval
"""


def period_truths(
    client: Client,
    periods: Iterable[Period],
    *,
    events_per_query: int = EVENTS_PER_QUERY,
) -> dict[Period, PeriodTruth]:
    """Every line's truth by event timestamps, keyed by (tenant, start, end): what
    `period_truth` counts, in slices of tenants of at most `events_per_query` events."""
    wanted = sorted({(t, s.astimezone(UTC), e.astimezone(UTC)) for t, s, e in periods})
    # Every interval to count: (period, PeriodTruth field, low, high); an empty one counts 0.
    intervals = [
        (period, name, low, high)
        for period in wanted
        for name, (low, high) in truth_intervals(period[1], period[2]).items()
        if high > low
    ]
    counts: dict[Period, dict[str, int]] = {period: {} for period in wanted}
    if intervals:
        lookback = min(midnight_on_or_before(low) for _, _, low, _ in intervals)
        window = {
            "lookback": lookback - DUPLICATE_HORIZON,
            "end": max(high for _, _, _, high in intervals),
        }
        tenants = sorted({period[0] for period, _, _, _ in intervals})
        events = client.query(TENANT_EVENTS_SQL, parameters={**window, "tenants": tenants})
        by_tenant: dict[str, list[int]] = {}
        for index, (period, _, _, _) in enumerate(intervals):
            by_tenant.setdefault(period[0], []).append(index)
        for part in tenant_slices(
            {str(t): int(n) for t, n in events.result_rows}, events_per_query
        ):
            chunk = [i for tenant in part for i in by_tenant[tenant]]
            chosen = [intervals[i] for i in chunk]
            result = client.query(
                PERIOD_QUERIES_SQL,
                parameters={
                    "tenants": part,
                    "lookback": min(midnight_on_or_before(c[2]) for c in chosen)
                    - DUPLICATE_HORIZON,
                    "end": max(c[3] for c in chosen),
                    "intervals": chunk,
                    "interval_tenants": [c[0][0] for c in chosen],
                    "lows": [c[2] for c in chosen],
                    "highs": [c[3] for c in chosen],
                },
            )
            for index, queries in result.result_rows:
                period, name, _, _ = intervals[int(index)]
                counts[period][name] = int(queries)
    # A tenant without events in the window was never read: its intervals count 0.
    return {
        period: truth_from_counts(period[1], period[2], {"queries": 0, **counts[period]})
        for period in wanted
    }
