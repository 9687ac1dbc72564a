"""The month report's distinct query count is exact when counted in slices of tenants and ids."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import clickhouse_connect
import pytest
from billing_sandbox.clickhouse_bridge import spawn_bridge
from billing_sandbox.demo import distinct_queries, tenant_slices
from billing_sandbox.usage_generator import generate_usage
from clickhouse_connect.driver.client import Client

from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS

START = date(2026, 3, 28)  # across a month end and a DST change elsewhere: UTC days only


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """Four days of generated usage (duplicates and late events included) in a fresh bridge."""
    proc, port = spawn_bridge(tmp_path_factory.mktemp("chdb") / "data")
    try:
        name = f"distinct_{uuid.uuid4().hex[:10]}"
        clickhouse_connect.get_client(host="127.0.0.1", port=port).command(
            f"CREATE DATABASE {name}"
        )
        ch = clickhouse_connect.get_client(host="127.0.0.1", port=port, database=name)
        sizes = {"north": 300.0, "south": 90.0, "east": 12.0, "west": 25.0, "centre": 4.0}
        summary = generate_usage(ch, list(sizes), START, 4, seed=11, events_per_tenant_day=sizes)
        assert summary.duplicates > 0  # the same query id stored more than once
        # One query id logged by two tenants: two queries, each billed to its own tenant.
        noon = datetime.combine(START, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
        ch.insert(
            "usage_events",
            [[uuid.uuid4(), "shared-id", t, noon, "query", 10, 1, 5, noon] for t in sizes],
            column_names=list(USAGE_EVENTS_COLUMNS),
        )
        yield ch
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _by_hand(ch: Client, start: datetime, end: datetime) -> int:
    """Every (tenant, query id) in the range, fetched and counted in Python."""
    rows = ch.query(
        "SELECT event_type, timestamp, tenant_id, toString(query_id) FROM usage_events"
    ).result_rows
    return len(
        {
            (tenant, qid)
            for kind, ts, tenant, qid in rows
            if kind == "query" and start <= ts.replace(tzinfo=UTC) < end
        }
    )


@pytest.mark.parametrize("per_slice", [1_000_000, 400, 97, 7])
@pytest.mark.parametrize(("first", "days"), [(0, 4), (1, 2)])
def test_the_distinct_count_in_slices_equals_every_id_counted_once(
    client: Client, per_slice: int, first: int, days: int
) -> None:
    start = datetime.combine(START + timedelta(days=first), datetime.min.time(), tzinfo=UTC)
    end = start + timedelta(days=days)
    expected = _by_hand(client, start, end)
    assert expected > 100
    assert distinct_queries(client, start, end, per_slice=per_slice) == expected


def test_tenants_are_grouped_in_id_order_and_a_large_one_is_split_by_hash() -> None:
    counts = [("a", 30), ("b", 50), ("c", 25), ("d", 250), ("e", 1), ("f", 99)]
    assert tenant_slices(counts, 100) == [
        ("a", "b", 1),
        ("c", "c", 1),
        ("d", "d", 3),
        ("e", "f", 1),
    ]
    assert tenant_slices(counts, 1_000) == [("a", "f", 1)]
    assert tenant_slices([], 100) == []
