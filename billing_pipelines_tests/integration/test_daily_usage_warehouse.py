"""Daily usage through the daily id table and the count projection: exact against raw events
counted in Python, whatever the order, batching, duplication and lateness of the events.

Each test works in its own ClickHouse database on the real chDB bridge, so the warehouse
migrations run on a table they have not seen before and no other test's rows are in the way.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.usage.migrations import MIGRATIONS, migrate_warehouse
from billing_pipelines.lib.usage.periods import interval_queries
from billing_pipelines.lib.usage.tables import (
    USAGE_BY_DAY_PROJECTION,
    USAGE_COUNTS_BY_DAY_PROJECTION,
    USAGE_EVENTS_COLUMNS,
    USAGE_EVENTS_DDL,
    USAGE_IDS_BY_DAY_TABLE,
)
from billing_pipelines_tests.cli_process import run_billing
from billing_pipelines_tests.support import scratch_warehouse_url

# Four days across a month boundary: two monthly partitions, and a look-back that reaches into
# the previous month.
DAYS = [date(2026, 2, 27) + timedelta(days=i) for i in range(4)]
TENANTS = ["t-north", "t-south", "t'; DROP TABLE usage_events; --"]


@dataclass(frozen=True)
class Event:
    tenant: str
    query_id: str
    kind: str
    at: datetime
    tokens: int
    embeddings: int

    def row(self) -> list[object]:
        return [
            uuid.uuid4(),
            self.query_id,
            self.tenant,
            self.at,
            self.kind,
            self.tokens,
            self.embeddings,
            7,
            self.at,
        ]


@pytest.fixture
def fresh_url(embedded_services: dict[str, str]) -> Iterator[str]:
    """A new, empty ClickHouse database on the bridge, dropped afterwards."""
    with scratch_warehouse_url(embedded_services["CLICKHOUSE_URL"], "usage") as url:
        yield url


def _random_events(rng: random.Random, per_tenant_day: int, prefix: str = "") -> list[Event]:
    """Queries and ingests at any millisecond, with cache copies seconds to two days later."""
    events: list[Event] = []
    for tenant in TENANTS:
        for day in DAYS:
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
            for i in range(per_tenant_day):
                kind = "query" if rng.random() < 0.85 else "embedding"
                at = midnight + timedelta(milliseconds=rng.randrange(86_400_000))
                tokens = rng.randrange(40, 4000)
                embeddings = 1 if kind == "query" else max(1, tokens // 350)
                first = Event(
                    tenant, f"{prefix}{kind[0]}-{day:%m%d}-{i}", kind, at, tokens, embeddings
                )
                events.append(first)
                if rng.random() < 0.25:  # the cache logs it again: same id, same tokens
                    lag = rng.choice([1, 900, 3_600_000, 20 * 3_600_000, 30 * 3_600_000])
                    later = first.at + timedelta(milliseconds=lag * rng.uniform(0.5, 2))
                    events.append(Event(tenant, first.query_id, kind, later, tokens, embeddings))
    # A query id that an ingest also used the day before: "seen before" is per query id,
    # whatever the kind of its earlier event.
    shared_at = datetime(2026, 3, 1, 23, 59, 59, 999_000, tzinfo=UTC)
    shared = f"{prefix}shared-id"
    events.append(Event(TENANTS[0], shared, "embedding", shared_at, 3500, 10))
    events.append(Event(TENANTS[0], shared, "query", shared_at + timedelta(milliseconds=1), 90, 1))
    return events


def _python_daily_usage(events: list[Event], day: date) -> pd.DataFrame:
    """The billing policy counted from raw events, one event at a time."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end, lookback = start + timedelta(days=1), start - timedelta(days=1)
    seen = {(e.tenant, e.query_id) for e in events if lookback <= e.at < start}
    first_copy: dict[tuple[str, str, str], Event] = {}
    raw: dict[str, int] = defaultdict(int)
    for event in sorted((e for e in events if start <= e.at < end), key=lambda e: e.at):
        raw[event.tenant] += 1
        first_copy.setdefault((event.tenant, event.query_id, event.kind), event)
    rows = []
    for tenant in sorted(raw):
        counted = [
            e
            for (t, query_id, _), e in first_copy.items()
            if t == tenant and (t, query_id) not in seen
        ]
        rows.append(
            {
                "tenant_id": tenant,
                "billable_queries": sum(1 for e in counted if e.kind == "query"),
                "tokens": sum(e.tokens for e in counted),
                "embeddings": sum(e.embeddings for e in counted),
                "raw_events": raw[tenant],
                "duplicate_events": raw[tenant] - len(counted),
            }
        )
    frame = pd.DataFrame(rows, columns=warehouse.DAILY_USAGE_COLUMNS)
    for column in warehouse.DAILY_USAGE_COLUMNS[1:]:
        frame[column] = frame[column].astype("int64")
    return frame


def _python_interval_queries(
    events: list[Event], tenant: str, start: datetime, end: datetime
) -> int:
    """Query ids billed in [start, end) by daily usage's rule: at their first query event of
    a UTC day, unless the tenant logged them (any kind) on the day before."""
    days: dict[str, set[date]] = defaultdict(set)
    first: dict[tuple[str, date], datetime] = {}
    for e in (e for e in events if e.tenant == tenant):
        days[e.query_id].add(e.at.date())
        if e.kind == "query":
            key = (e.query_id, e.at.date())
            first[key] = min(first.get(key, e.at), e.at)
    return sum(
        1
        for (query_id, day), at in first.items()
        if start <= at < end and day - timedelta(days=1) not in days[query_id]
    )


def _insert(client: Client, events: list[Event]) -> None:
    client.insert(
        "usage_events", [e.row() for e in events], column_names=list(USAGE_EVENTS_COLUMNS)
    )


def _plan(client: Client, day: date) -> str:
    result = client.query(
        "EXPLAIN projections = 1 " + warehouse.DAILY_USAGE_SQL,
        parameters={"day": day, "lookback": day - warehouse.DUPLICATE_HORIZON},
    )
    return "\n".join(str(row[0]) for row in result.result_rows)


def _projections_used(client: Client, sql: str, parameters: dict[str, object]) -> str:
    result = client.query("EXPLAIN projections = 1 " + sql, parameters=parameters)
    return "\n".join(str(row[0]) for row in result.result_rows)


def test_migrations_on_a_table_that_already_holds_data_backfill_the_daily_ids(
    fresh_url: str,
) -> None:
    client = warehouse.connect(fresh_url)
    client.command(USAGE_EVENTS_DDL)  # a warehouse from before the migrations
    rng = random.Random(11)
    events = _random_events(rng, 40)
    rng.shuffle(events)
    for i in range(0, len(events), 97):  # many parts, copies of one id in different ones
        _insert(client, events[i : i + 97])
    floor_sql = (
        "SELECT tenant_id, count() FROM usage_events "
        "WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}"
        " GROUP BY tenant_id"
    )
    start, end = warehouse.day_bounds(DAYS[2])
    # Before the migrations the table has no day-first projection: they are what adds it.
    assert USAGE_BY_DAY_PROJECTION not in _projections_used(
        client, floor_sql, {"start": start, "end": end}
    )

    assert migrate_warehouse(client) == [m.id for m in MIGRATIONS]
    assert migrate_warehouse(client) == []  # recorded: a second run changes nothing
    warehouse.ensure_usage_schema(client)
    assert USAGE_COUNTS_BY_DAY_PROJECTION in _plan(client, DAYS[2])
    assert USAGE_BY_DAY_PROJECTION in _projections_used(
        client, floor_sql, {"start": start, "end": end}
    )
    for day in DAYS:
        pd.testing.assert_frame_equal(
            warehouse.daily_usage(client, day), _python_daily_usage(events, day)
        )
    # The migration's statements run again (an interrupted migration is re-run whole): the
    # backfill copies every row a second time and nothing changes.
    for migration in MIGRATIONS:
        for statement in migration.statements:
            client.command(statement)
    # New events (some copies of old ones, some late for old days) reach the table by the view.
    more = _random_events(random.Random(12), 15, prefix="new-") + rng.sample(events, 50)
    _insert(client, more)
    for day in DAYS:
        pd.testing.assert_frame_equal(
            warehouse.daily_usage(client, day), _python_daily_usage(events + more, day)
        )


@pytest.mark.parametrize("seed", [3, 29])
def test_daily_usage_is_exact_with_duplicates_and_late_events(fresh_url: str, seed: int) -> None:
    rng = random.Random(seed)
    client = warehouse.connect(fresh_url)
    warehouse.ensure_usage_schema(client)
    events = _random_events(rng, 60)
    rng.shuffle(events)
    # Most events arrive on time; a fifth arrive after their days were first aggregated
    # (hours or days late), in small batches, as new parts of the table.
    on_time, late = events[: len(events) * 4 // 5], events[len(events) * 4 // 5 :]
    _insert(client, on_time)
    for day in DAYS:
        pd.testing.assert_frame_equal(
            warehouse.daily_usage(client, day), _python_daily_usage(on_time, day)
        )
    for i in range(0, len(late), 37):
        _insert(client, late[i : i + 37])
    assert USAGE_COUNTS_BY_DAY_PROJECTION in _plan(client, DAYS[3])
    totals = 0
    for day in DAYS:
        usage = warehouse.daily_usage(client, day)
        pd.testing.assert_frame_equal(usage, _python_daily_usage(events, day))
        totals += int(usage["raw_events"].sum())
    last_end = warehouse.day_bounds(DAYS[-1])[1]
    assert totals == sum(1 for e in events if e.at < last_end)  # every event on exactly one day
    # The test data holds the cross-kind case: an id first logged by an ingest just before
    # midnight and again as a query just after counts on the earlier day only.
    march_2 = _python_daily_usage(events, date(2026, 3, 2))
    assert march_2.loc[march_2["tenant_id"] == "t-north", "duplicate_events"].sum() >= 1


def test_split_days_are_exact_at_any_instant(fresh_url: str) -> None:
    rng = random.Random(5)
    client = warehouse.connect(fresh_url)
    warehouse.ensure_usage_schema(client)
    events = _random_events(rng, 50)
    _insert(client, events)
    for _ in range(12):
        tenant = rng.choice(TENANTS)
        day = rng.choice(DAYS[1:])
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        boundary = midnight + timedelta(milliseconds=rng.randrange(1, 86_400_000))
        next_midnight = midnight + timedelta(days=1)
        before = interval_queries(client, tenant, midnight, boundary)
        after = interval_queries(client, tenant, boundary, next_midnight)
        assert before == _python_interval_queries(events, tenant, midnight, boundary)
        assert after == _python_interval_queries(events, tenant, boundary, next_midnight)
        # A period from the boundary to an instant two days on spans midnights and a month end.
        end = boundary + timedelta(days=2, milliseconds=rng.randrange(86_400_000))
        assert interval_queries(client, tenant, boundary, end) == _python_interval_queries(
            events, tenant, boundary, end
        )


def _scattered_events(rng: random.Random, first_day: date, days: int) -> list[Event]:
    """Ids at any millisecond of any of the days, each logged one to four times: milliseconds,
    hours or a day later (a duplicate), or two and more days later (beyond the look-back, so
    billed again), some used by both kinds, some tenants silent on some days."""
    tenants = rng.sample(["acme", "t\u00e9nant \u2603", "b'; --", "zeta", "x" * 300], 3)
    events: list[Event] = []
    for d in range(days):
        midnight = datetime.combine(first_day + timedelta(days=d), datetime.min.time(), UTC)
        for tenant in tenants:
            for i in range(rng.choice([0, 3, 17, 40])):
                query_id = f"{rng.getrandbits(40):x}-{d}-{i}"
                kinds = rng.choice([["query"], ["query"], ["embedding"], ["embedding", "query"]])
                at = midnight + timedelta(milliseconds=rng.randrange(86_400_000))
                for kind in kinds:
                    tokens, embeddings = rng.randrange(1, 5000), rng.randrange(1, 30)
                    first = Event(tenant, query_id, kind, at, tokens, embeddings)
                    events.append(first)
                    for _ in range(rng.choice([0, 0, 0, 1, 3])):
                        lag = rng.choice([0, 1, 60_000, 5 * 3_600_000, 26 * 3_600_000])
                        lag += rng.choice([0, 0, 2 * 86_400_000, 3 * 86_400_000])
                        later = first.at + timedelta(milliseconds=lag + rng.randrange(1_000))
                        events.append(Event(tenant, query_id, kind, later, tokens, embeddings))
                    at += timedelta(milliseconds=rng.randrange(0, 3))  # same instant or just after
    return events


@pytest.mark.parametrize("seed", [101, 202, 303])
def test_daily_usage_is_exact_at_random_days_orderings_and_batches(
    fresh_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    client = warehouse.connect(fresh_url)
    warehouse.ensure_usage_schema(client)
    first_day = date(2024, 12, 20) + timedelta(days=rng.randrange(400))  # year and month ends
    days = rng.randint(3, 5)
    events = _scattered_events(rng, first_day, days)
    rng.shuffle(events)  # arrival order is not event order: late and early copies
    checked_day = first_day + timedelta(days=rng.randrange(days))
    inserted: list[Event] = []
    while len(inserted) < len(events):
        batch = events[len(inserted) : len(inserted) + rng.choice([1, 7, 60, 250])]
        _insert(client, batch)
        inserted += batch
        if rng.random() < 0.2:  # a day aggregated before all its events arrived
            pd.testing.assert_frame_equal(
                warehouse.daily_usage(client, checked_day),
                _python_daily_usage(inserted, checked_day),
            )
    resent = rng.sample(events, len(events) // 10)  # the same events delivered again
    _insert(client, resent)
    everything = events + resent
    for d in range(-1, days + 4):
        day = first_day + timedelta(days=d)
        pd.testing.assert_frame_equal(
            warehouse.daily_usage(client, day), _python_daily_usage(everything, day)
        )
    tenants = sorted({e.tenant for e in events})
    for _ in range(6):  # split days at odd instants read the same events
        tenant = rng.choice(tenants)
        midnight = datetime.combine(
            first_day + timedelta(days=rng.randrange(days)), datetime.min.time(), UTC
        )
        boundary = midnight + timedelta(milliseconds=rng.randrange(1, 86_400_000))
        for start, end in ((midnight, boundary), (boundary, midnight + timedelta(days=1))):
            assert interval_queries(client, tenant, start, end) == _python_interval_queries(
                everything, tenant, start, end
            )


def test_usage_events_emptied_without_its_daily_ids_fails_the_day(fresh_url: str) -> None:
    client = warehouse.connect(fresh_url)
    warehouse.ensure_usage_schema(client)
    events = _random_events(random.Random(7), 10)
    _insert(client, events)
    client.command("TRUNCATE TABLE usage_events")  # the ids stay: out of step
    kept = [e for e in events if e.tenant == TENANTS[0]]
    _insert(client, kept)
    with pytest.raises(DatabaseError, match="usage_ids_by_day is out of step"):
        warehouse.daily_usage(client, DAYS[1])
    warehouse.clear_usage_events(client)
    assert client.query(f"SELECT count() FROM {USAGE_IDS_BY_DAY_TABLE}").result_rows[0][0] == 0
    _insert(client, kept)
    for day in DAYS:
        pd.testing.assert_frame_equal(
            warehouse.daily_usage(client, day), _python_daily_usage(kept, day)
        )


def test_an_unknown_event_kind_fails_the_day(fresh_url: str) -> None:
    client = warehouse.connect(fresh_url)
    warehouse.ensure_usage_schema(client)
    at = datetime(2026, 3, 1, 8, tzinfo=UTC)
    _insert(
        client,
        [
            Event("t-north", "q-1", "query", at, 100, 1),
            Event("t-north", "r-1", "rerank", at, 300, 0),
        ],
    )
    with pytest.raises(DatabaseError, match="event type other than query and embedding"):
        warehouse.daily_usage(client, date(2026, 3, 1))


def test_billing_db_migrate_warehouse_adds_the_projection_once(
    fresh_url: str, tmp_path: Path
) -> None:
    client = warehouse.connect(fresh_url)
    client.command(USAGE_EVENTS_DDL)  # the SaaS's table, as production has it
    _insert(client, _random_events(random.Random(1), 5))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CLICKHOUSE_", "STRIPE_", "DAGSTER_", "BILLING_"))
    }
    env.update({"BILLING_HOME": str(tmp_path), "CLICKHOUSE_URL": fresh_url})
    command = ["db", "migrate-warehouse"]
    first = run_billing(command, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip() == "applied " + ", ".join(m.id for m in MIGRATIONS)
    assert USAGE_COUNTS_BY_DAY_PROJECTION in _plan(client, DAYS[0])
    again = run_billing(command, env)
    assert again.stdout.strip() == "warehouse up to date", again.stdout + again.stderr


@pytest.mark.parametrize(
    ("clickhouse_url", "named"),
    [(None, "CLICKHOUSE_URL ("), ("mysql://u:hunter2@h/db", "CLICKHOUSE_URL is invalid")],
)
def test_migrate_warehouse_without_a_usable_url_is_one_line(
    tmp_path: Path, clickhouse_url: str | None, named: str
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CLICKHOUSE_", "STRIPE_", "DAGSTER_", "BILLING_"))
    }
    env["BILLING_HOME"] = str(tmp_path)
    if clickhouse_url:
        env["CLICKHOUSE_URL"] = clickhouse_url
    result = run_billing(["db", "migrate-warehouse"], env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert named in lines[0] and "hunter2" not in lines[0]
