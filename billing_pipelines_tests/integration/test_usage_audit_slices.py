"""The usage audit's warehouse truths are the same read in slices of tenants as in one query, and
as every event counted by hand."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import clickhouse_connect
import pytest
from billing_sandbox.clickhouse_bridge import spawn_bridge
from billing_sandbox.usage_generator import generate_usage
from clickhouse_connect.driver.client import Client

from billing_pipelines.lib.reconciliation.period_truths import period_truths
from billing_pipelines.lib.reconciliation.usage_audit import WAREHOUSE_SQL, warehouse_queries
from billing_pipelines.lib.usage.periods import period_truth
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS

START = date(2026, 4, 28)  # across a month end
TENANTS = {"ash": 40.0, "birch": 220.0, "cedar": 15.0, "dogwood": 90.0}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """Six days of four tenants' generated usage, plus ids logged on both sides of midnight."""
    proc, port = spawn_bridge(tmp_path_factory.mktemp("chdb") / "data")
    try:
        name = f"slices_{uuid.uuid4().hex[:10]}"
        clickhouse_connect.get_client(host="127.0.0.1", port=port).command(
            f"CREATE DATABASE {name}"
        )
        ch = clickhouse_connect.get_client(host="127.0.0.1", port=port, database=name)
        generate_usage(ch, list(TENANTS), START, 6, seed=17, events_per_tenant_day=TENANTS)
        # A query logged at 23:59 and again at 00:01 counts on its first day only; an ingest the
        # day before takes a query's id off the next day; a query on the day before `first`
        # is only look-back.
        midnight = datetime(2026, 4, 30, tzinfo=UTC)
        rows = [
            ("ash", "x_across", midnight - timedelta(minutes=1), "query"),
            ("ash", "x_across", midnight + timedelta(minutes=1), "query"),
            ("cedar", "x_ingested", midnight - timedelta(hours=2), "embedding"),
            ("cedar", "x_ingested", midnight + timedelta(hours=2), "query"),
            ("dogwood", "x_early", datetime(2026, 4, 28, 23, tzinfo=UTC), "query"),
        ]
        ch.insert(
            "usage_events",
            [[uuid.uuid4(), q, t, ts, kind, 10, 1, 5, ts] for t, q, ts, kind in rows],
            column_names=list(USAGE_EVENTS_COLUMNS),
        )
        yield ch
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def by_hand(ch: Client, first: date, last: date) -> dict[tuple[str, date], int]:
    """Every event fetched and the day rule applied in Python: an id counts on a day in
    [first, last] it was queried, unless the tenant logged it (any kind) the day before."""
    logged: dict[tuple[str, str], set[date]] = defaultdict(set)
    queried: dict[tuple[str, str], set[date]] = defaultdict(set)
    for tenant, query_id, ts, kind in ch.query(
        "SELECT tenant_id, query_id, timestamp, event_type FROM usage_events"
    ).result_rows:
        day = ts.replace(tzinfo=UTC).date() if ts.tzinfo is None else ts.astimezone(UTC).date()
        logged[(tenant, query_id)].add(day)
        if kind == "query":
            queried[(tenant, query_id)].add(day)
    truth: dict[tuple[str, date], int] = defaultdict(int)
    for (tenant, query_id), days in queried.items():
        for day in days:
            if first <= day <= last and day - timedelta(days=1) not in logged[(tenant, query_id)]:
                truth[(tenant, day)] += 1
    return dict(truth)


class _Counting:
    """The real client, counting the audit's distinct-count queries and the tenants in each."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.slices: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        if sql == WAREHOUSE_SQL:
            self.slices.append(list(parameters["tenants"]))
        return self.client.query(sql, parameters=parameters)


@pytest.mark.parametrize("per_query", [10**9, 1, 2_500])
@pytest.mark.parametrize(
    ("first", "last"),
    [(date(2026, 4, 29), date(2026, 5, 3)), (date(2026, 4, 30), date(2026, 4, 30))],
)
def test_the_truth_in_slices_is_every_event_counted_by_hand(
    client: Client, per_query: int, first: date, last: date
) -> None:
    spy = _Counting(client)
    truth = warehouse_queries(spy, [*TENANTS, "nobody"], first, last, events_per_query=per_query)  # type: ignore[arg-type]
    expected = by_hand(client, first, last)
    assert truth == expected
    assert sum(expected.values()) > 100
    # Each tenant with events is read once; a tenant with none ("nobody") is not read.
    assert sorted(t for part in spy.slices for t in part) == sorted(TENANTS)
    if per_query == 1:
        assert len(spy.slices) == len(TENANTS)  # every tenant is larger than one event
    if per_query == 10**9:
        assert len(spy.slices) == 1


def test_the_rule_s_edge_cases_are_in_the_warehouse_truth(client: Client) -> None:
    one = warehouse_queries(client, ["ash", "cedar"], date(2026, 4, 29), date(2026, 4, 30))
    split = warehouse_queries(
        client, ["ash", "cedar"], date(2026, 4, 29), date(2026, 4, 30), events_per_query=1
    )
    assert one == split
    hand = by_hand(client, date(2026, 4, 29), date(2026, 4, 30))
    assert one == {k: v for k, v in hand.items() if k[0] in ("ash", "cedar")}


def instants_by_hand(ch: Client) -> dict[str, list[datetime]]:
    """Every billing instant per tenant, from every event fetched: an id's first query event
    of a UTC day, unless the tenant logged the id (any kind) the day before."""
    logged: dict[tuple[str, str], set[date]] = defaultdict(set)
    first: dict[tuple[str, str, date], datetime] = {}
    for tenant, query_id, ts, kind in ch.query(
        "SELECT tenant_id, query_id, timestamp, event_type FROM usage_events"
    ).result_rows:
        at = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        logged[(tenant, query_id)].add(at.date())
        if kind == "query":
            key = (tenant, query_id, at.date())
            first[key] = min(first.get(key, at), at)
    instants: dict[str, list[datetime]] = defaultdict(list)
    for (tenant, query_id, day), at in first.items():
        if day - timedelta(days=1) not in logged[(tenant, query_id)]:
            instants[tenant].append(at)
    return instants


def _random_periods(seed: int) -> list[tuple[str, datetime, datetime]]:
    """Periods starting at any millisecond of the data's days (or at midnight), lasting from
    nothing to four days, some ending at midnight, for every tenant and one with no events."""
    rng = random.Random(seed)
    origin = datetime.combine(START, datetime.min.time(), tzinfo=UTC) - timedelta(days=1)
    periods = []
    for tenant in [*TENANTS, "nobody"]:
        for _ in range(6):
            start = origin + timedelta(milliseconds=rng.randrange(8 * 86_400_000))
            if rng.random() < 0.25:
                start = start.replace(hour=0, minute=0, second=0, microsecond=0)
            end = start + timedelta(milliseconds=rng.randrange(4 * 86_400_000))
            if rng.random() < 0.25:
                end = max(start, end.replace(hour=0, minute=0, second=0, microsecond=0))
            if rng.random() < 0.1:
                end = start
            periods.append((tenant, start, end))
    # A period in another time zone is the same instants.
    tenant, start, end = periods[0]
    east = timezone(timedelta(hours=5, minutes=30))
    periods.append((tenant, start.astimezone(east), end.astimezone(east)))
    return periods


@pytest.mark.parametrize("per_query", [10**9, 1, 700])
def test_every_line_s_truth_at_once_is_each_line_counted_by_hand(
    client: Client, per_query: int
) -> None:
    periods = _random_periods(seed=per_query % 97)
    truths = period_truths(client, periods, events_per_query=per_query)
    instants = instants_by_hand(client)

    def count(tenant: str, low: datetime, high: datetime) -> int:
        return sum(1 for at in instants.get(tenant, []) if low <= at < high)

    def midnight(at: datetime) -> datetime:
        return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    checked = 0
    for tenant, start, end in periods:
        truth = truths[(tenant, start.astimezone(UTC), end.astimezone(UTC))]
        expected = [count(tenant, start, end), 0, 0, 0, 0]
        # The start's day is split at the start (up to the next midnight, or the end before
        # it); the end's day at the end, from its midnight or where the start's part ended.
        head_end = min(midnight(start) + timedelta(days=1), end)
        if midnight(start) != start and end > start:
            expected[1] = count(tenant, start, head_end)
            expected[3] = count(tenant, midnight(start), start)
        else:
            head_end = start
        tail_start = max(midnight(end), head_end)
        if tail_start != end:
            expected[2] = count(tenant, tail_start, end)
            expected[4] = count(tenant, end, midnight(end) + timedelta(days=1))
        got = [truth.queries, truth.head, truth.tail, truth.head_before, truth.tail_after]
        assert got == expected, (tenant, start, end)
        # The same as counting the line alone.
        assert truth == period_truth(client, tenant, start, end)
        checked += truth.queries
    assert checked > 1_000
