"""The month report's distinct query count is exact when counted in slices of the ids."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import clickhouse_connect
import pytest
from billing_sandbox.clickhouse_bridge import spawn_bridge
from billing_sandbox.demo import distinct_queries
from billing_sandbox.usage_generator import generate_usage
from clickhouse_connect.driver.client import Client

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
        summary = generate_usage(
            ch,
            ["north", "south"],
            START,
            4,
            seed=11,
            events_per_tenant_day={"north": 300.0, "south": 90.0},
        )
        assert summary.duplicates > 0  # the same query id stored more than once
        yield ch
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _by_hand(ch: Client, start: datetime, end: datetime) -> int:
    """Every query id in the range, fetched and counted in Python."""
    rows = ch.query(
        "SELECT event_type, timestamp, toString(query_id) FROM usage_events"
    ).result_rows
    return len(
        {qid for kind, ts, qid in rows if kind == "query" and start <= ts.replace(tzinfo=UTC) < end}
    )


@pytest.mark.parametrize("per_slice", [1_000_000, 97, 7])
@pytest.mark.parametrize(("first", "days"), [(0, 4), (1, 2)])
def test_the_distinct_count_in_slices_equals_every_id_counted_once(
    client: Client, per_slice: int, first: int, days: int
) -> None:
    start = datetime.combine(START + timedelta(days=first), datetime.min.time(), tzinfo=UTC)
    end = start + timedelta(days=days)
    expected = _by_hand(client, start, end)
    assert expected > 100
    assert distinct_queries(client, start, end, per_slice=per_slice) == expected
