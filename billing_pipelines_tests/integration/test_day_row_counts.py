"""A day's raw events counted two ways on a table whose parts hold one day or several: daily
usage (grouped, from the count projection) and the benchmark's truth (an ungrouped count() over
the day's timestamp range) must both equal the rows inserted, counted here from the plan.

The layout is the one a month of large daily inserts leaves while merges catch up: one part
spanning several days, as a merge leaves it (with granules wholly inside one tenant's day, as at
millions of events a day), next to fresh parts holding only the measured day. On it the engine
answers an ungrouped count() partly from the day-first projection and partly from the primary
key's exact ranges, and counted some granules twice; the benchmark's truth turns every
projection off.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from billing_pipelines.lib.usage import warehouse
from billing_pipelines_tests.support import scratch_warehouse_url


def _bench_module() -> Any:
    """The usage benchmark's module, loaded from its file (bench/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "usage_aggregation.py"
    spec = importlib.util.spec_from_file_location("usage_aggregation_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


day_row_count = _bench_module().day_row_count

# One insert: (tenant, day, events). Events of a day run from 00:00:00.000 to 23:59:59.999, so
# the neighbouring days put rows one millisecond either side of the measured day's bounds.
Plan = list[tuple[str, date, int]]


@pytest.fixture
def client(embedded_services: dict[str, str]) -> Iterator[Client]:
    """A new, empty ClickHouse database on the bridge with the warehouse migrated, merges off."""
    with scratch_warehouse_url(embedded_services["CLICKHOUSE_URL"], "daycount") as url:
        db = warehouse.connect(url)
        warehouse.ensure_usage_schema(db)
        # Parts stay as inserted: the layout under test is the one merges have not reached yet.
        db.command("SYSTEM STOP MERGES usage_events")
        yield db


def _insert(client: Client, plan: Plan) -> None:
    """One INSERT (one part per monthly partition) of `events` rows per (tenant, day)."""
    rows = [
        (tenant, int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp()), n)
        for tenant, day, n in plan
    ]
    client.command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
                                  tokens_used, embeddings_count, latency_ms, ingested_at)
        SELECT generateUUIDv4(i), concat(tenant, '-', toString(day0), '-', toString(i)), tenant,
               fromUnixTimestamp64Milli(day0 * 1000 + intDiv(i * 86399999, n - 1), 'UTC') AS ts,
               'query', 100, 1, 5, ts
        FROM
        (
            SELECT p.1 AS tenant, p.2 AS day0, p.3 AS n, arrayJoin(range(p.3)) AS i
            FROM (SELECT arrayJoin({plan:Array(Tuple(String, Int64, UInt32))}) AS p)
        )
        """,
        parameters={"plan": rows},
        settings={"max_insert_block_size": 1_000_000, "min_insert_block_size_rows": 1_000_000},
    )


@pytest.mark.parametrize("day", [date(2026, 3, 31), date(2026, 7, 14)])
def test_day_rows_equal_the_rows_inserted_when_merged_and_fresh_parts_hold_the_day(
    client: Client, day: date
) -> None:
    before, after = day - timedelta(days=1), day + timedelta(days=1)
    # Two tenants with granules (8,192 rows) wholly inside their day, and a dozen smaller ones
    # whose days start and end inside granules: reading the day from the table's tenant-first
    # order then costs more marks than the day-first projection, which the engine picks for it.
    sizes = [("t-big", 21_000), ("t-mid", 17_500)]
    sizes += [(f"t-{k:02d}", 2_000 + 150 * k) for k in range(12)]
    merged: Plan = [
        (tenant, d, n) for tenant, n in sizes for d in (day - timedelta(days=2), before, day, after)
    ]
    fresh: list[Plan] = [
        [("t-big", day, 9_000), ("t-mid", day, 4_100)],
        [("t-big", day, 2_500), ("t-new", day, 700)],
        [("t-mid", after, 3_000)],
    ]
    _insert(client, merged)
    for plan in fresh:
        _insert(client, plan)
    expected: Counter[str] = Counter()
    ids: dict[str, set[int]] = {}
    for tenant, d, n in merged + [row for plan in fresh for row in plan]:
        if d == day:
            expected[tenant] += n
            ids.setdefault(tenant, set()).update(range(n))  # query ids restart in each insert
    parts = client.query(
        "SELECT count() FROM system.parts "
        "WHERE database = currentDatabase() AND table = 'usage_events' AND active"
    ).result_rows[0][0]
    months = {d.month for _, d, _ in merged}
    assert parts == len(months) + len(fresh)  # the layout meant: merges have not run

    usage = warehouse.daily_usage(client, day)
    assert dict(zip(usage["tenant_id"], usage["raw_events"], strict=True)) == expected
    # A later insert repeats the first ids of the day (copies in other parts); no id of the
    # day was seen the day before (ids carry their day): billable = distinct ids of the day.
    billable = {tenant: len(day_ids) for tenant, day_ids in ids.items()}
    assert dict(zip(usage["tenant_id"], usage["billable_queries"], strict=True)) == billable
    assert day_row_count(client, day) == sum(expected.values())
