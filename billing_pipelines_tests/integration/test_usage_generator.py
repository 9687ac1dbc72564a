"""Synthetic usage is realistic, seeded, and its billing truth is exactly what it planned."""

from __future__ import annotations

import os
import signal
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import clickhouse_connect
import pytest
from billing_sandbox import generation_process
from billing_sandbox.clickhouse_bridge import spawn_bridge
from billing_sandbox.usage_generator import (
    GenerationSummary,
    generate_usage,
    planned_daily_queries,
    usage_chunks,
)
from clickhouse_connect.driver.client import Client

from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS, USAGE_EVENTS_DDL
from billing_pipelines.lib.usage.warehouse import daily_usage

TENANTS = ["acme", "globex", "initech"]
START = date(2025, 11, 1)  # a Saturday: the month has 10 weekend days
DAYS = 30
RATES = {"acme": 40.0, "globex": 150.0, "initech": 400.0}
CONTENT_HASH = (
    "SELECT count(), sum(cityHash64(event_id, query_id, tenant_id, timestamp, event_type, "
    "tokens_used, embeddings_count, latency_ms, ingested_at)) FROM usage_events"
)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A bridge process of our own over a fresh chDB folder."""
    proc, bridge_port = spawn_bridge(tmp_path_factory.mktemp("chdb") / "data")
    try:
        yield bridge_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def fresh_database(port: int) -> str:
    """A new, empty database on the bridge; its name."""
    name = f"gen_{uuid.uuid4().hex[:12]}"
    clickhouse_connect.get_client(host="127.0.0.1", port=port).command(f"CREATE DATABASE {name}")
    return name


def fresh_client(port: int) -> Client:
    """A client on a new database, so each generation starts from an empty usage_events."""
    return clickhouse_connect.get_client(host="127.0.0.1", port=port, database=fresh_database(port))


@pytest.fixture(scope="module")
def month(port: int) -> tuple[Client, GenerationSummary]:
    """One generated month for three tenants of very different sizes."""
    client = fresh_client(port)
    summary = generate_usage(client, TENANTS, START, DAYS, seed=42, events_per_tenant_day=RATES)
    return client, summary


def test_distinct_queries_per_tenant_day_are_the_planned_counts(
    month: tuple[Client, GenerationSummary],
) -> None:
    client, _ = month
    rows = client.query(
        "SELECT tenant_id, toDate(timestamp), uniqExact(query_id) FROM usage_events "
        "WHERE event_type = 'query' GROUP BY 1, 2"
    ).result_rows
    actual = {(tenant, day): count for tenant, day, count in rows}
    planned = planned_daily_queries(TENANTS, START, DAYS, 42, RATES)
    assert actual == {key: count for key, count in planned.items() if count}
    # The plan itself follows the parameters: weekday means near the rate, weekends far lower.
    for tenant, rate in RATES.items():
        weekday = [c for (t, d), c in planned.items() if t == tenant and d.weekday() < 5]
        weekend = [c for (t, d), c in planned.items() if t == tenant and d.weekday() >= 5]
        mean_all = sum(weekday + weekend) / DAYS
        assert abs(mean_all - rate) < 4 * (rate / DAYS) ** 0.5 + 0.1 * rate
        assert sum(weekend) / len(weekend) < 0.6 * sum(weekday) / len(weekday)


def test_billing_truth_matches_the_warehouse_daily_usage(
    month: tuple[Client, GenerationSummary],
) -> None:
    client, summary = month
    planned = planned_daily_queries(TENANTS, START, DAYS, 42, RATES)
    total_duplicates = 0
    for offset in range(DAYS):
        day = START + timedelta(days=offset)
        frame = daily_usage(client, day).set_index("tenant_id")
        for tenant in TENANTS:
            assert frame.loc[tenant, "billable_queries"] == planned[(tenant, day)]
        total_duplicates += int(frame["duplicate_events"].sum())
    assert total_duplicates == summary.duplicates


def test_duplicates_and_late_events_are_present_at_their_rates(
    month: tuple[Client, GenerationSummary],
) -> None:
    client, summary = month
    rows, distinct_pairs, distinct_queries, late = client.query(
        "SELECT count(), uniqExact(query_id, event_type), "
        "uniqExactIf(query_id, event_type = 'query'), "
        "countIf(ingested_at - timestamp >= 6 * 3600) FROM usage_events"
    ).result_rows[0]
    assert rows == summary.rows_inserted
    assert rows - distinct_pairs == summary.duplicates > 0
    assert 0.014 < summary.duplicates / distinct_pairs < 0.026  # duplicate_rate=0.02
    assert late == summary.late_events > 0
    assert 0.006 < late / rows < 0.014  # late_rate=0.01
    assert distinct_queries == summary.distinct_queries
    # A duplicate is the same query logged again: same tenant, kind, tokens, new event_id.
    assert client.query(
        "SELECT countIf(tenants > 1 OR token_values > 1 OR event_ids != copies) FROM ("
        "SELECT uniqExact(tenant_id) AS tenants, uniqExact(tokens_used) AS token_values, "
        "uniqExact(event_id) AS event_ids, count() AS copies FROM usage_events "
        "GROUP BY query_id, event_type HAVING copies > 1)"
    ).result_rows == [(0,)]


def test_daily_shape_is_realistic(month: tuple[Client, GenerationSummary]) -> None:
    client, _ = month
    by_hour: dict[int, int] = {
        hour: count
        for hour, count in client.query(
            "SELECT toHour(timestamp), count() FROM usage_events WHERE event_type = 'query' "
            "GROUP BY 1"
        ).result_rows
    }
    night = sum(by_hour.get(h, 0) for h in range(1, 5))
    afternoon = sum(by_hour.get(h, 0) for h in range(13, 17))
    assert afternoon > 3 * night
    tokens, embeddings = client.query(
        "SELECT avgIf(tokens_used, event_type = 'query'), avgIf(embeddings_count, "
        "event_type = 'embedding') FROM usage_events"
    ).result_rows[0]
    assert 300 < tokens < 3000 and embeddings > 5


def test_same_seed_same_data_and_waves_add_up(port: int) -> None:
    kwargs = {"tenants": ["a", "b"], "start": START, "days": 10, "seed": 7}
    first, second, other, waves = (fresh_client(port) for _ in range(4))
    generate_usage(first, **kwargs)  # type: ignore[arg-type]
    generate_usage(second, **kwargs)  # type: ignore[arg-type]
    generate_usage(other, **{**kwargs, "seed": 8})  # type: ignore[arg-type]
    fingerprint = first.query(CONTENT_HASH).result_rows
    assert fingerprint == second.query(CONTENT_HASH).result_rows
    assert fingerprint != other.query(CONTENT_HASH).result_rows
    # Late arrivals: what had arrived by the cut-off, then the rest, is the same data set.
    cutoff = datetime.combine(START + timedelta(days=10), datetime.min.time(), tzinfo=UTC)
    early = generate_usage(waves, ingested_before=cutoff, **kwargs)  # type: ignore[arg-type]
    late = generate_usage(waves, ingested_after=cutoff, **kwargs)  # type: ignore[arg-type]
    # The second wave is (almost) all late events: only seconds-lagged rows from just before the
    # cut-off can be in it without being late.
    assert 0 < late.rows_inserted - 5 <= late.late_events <= late.rows_inserted
    assert early.rows_inserted + late.rows_inserted == fingerprint[0][0]
    assert waves.query(CONTENT_HASH).result_rows == fingerprint


def test_monthly_targets_put_a_starter_tenant_over_its_included_queries(port: int) -> None:
    client = fresh_client(port)
    summary = generate_usage(
        client, ["starter-heavy"], START, DAYS, seed=3, monthly_queries={"starter-heavy": 15_000}
    )
    expected = 15_000 * DAYS / (365.25 / 12)
    assert abs(summary.distinct_queries - expected) < 0.05 * expected
    assert summary.distinct_queries > 10_000  # the starter plan includes 10,000


def test_invalid_arguments_are_rejected_before_writing(port: int) -> None:
    client = fresh_client(port)
    with pytest.raises(ValueError, match="days"):
        generate_usage(client, ["a"], START, 0, seed=1)
    with pytest.raises(ValueError, match="duplicate_rate"):
        generate_usage(client, ["a"], START, 1, seed=1, duplicate_rate=1.5)
    assert client.command("EXISTS TABLE usage_events") == 0


@pytest.mark.slow
def test_a_million_events_take_seconds(port: int) -> None:
    client = fresh_client(port)
    started = time.monotonic()
    summary = generate_usage(
        client, [f"t{i}" for i in range(8)], START, DAYS, seed=1, events_per_tenant_day=4_500
    )
    elapsed = time.monotonic() - started
    assert summary.rows_inserted > 1_000_000
    assert client.command("SELECT count() FROM usage_events") == summary.rows_inserted
    assert elapsed < 60, f"{summary.rows_inserted} rows took {elapsed:.1f}s"


def test_rows_come_one_tenant_day_at_a_time() -> None:
    tenants = ["north", "south"]
    start = date(2026, 2, 25)  # crosses the end of February
    chunks = list(usage_chunks(tenants, start, 6, seed=11, events_per_tenant_day=80.0))
    seen = []
    for day, chunk in chunks:
        (tenant,) = set(chunk["tenant_id"])
        days = {datetime.fromtimestamp(int(ms) // 1000, UTC).date() for ms in chunk["timestamp"]}
        assert days == {day}
        seen.append((tenant, day))
    # Tenants in order, each tenant's days in order, every tenant-day once (at ~80 queries a
    # day no day is empty).
    assert seen == [(t, start + timedelta(days=d)) for t in tenants for d in range(6)]
    # Each chunk holds that tenant-day's planned distinct queries.
    planned = planned_daily_queries(tenants, start, 6, 11, 80.0)
    for (_, chunk), key in zip(chunks, seen, strict=True):
        queries = chunk["query_id"][chunk["event_type"] == "query"]
        assert len(set(queries.tolist())) == planned[key]


class _InsertSizes:
    """The real client, recording how many rows each usage insert carried."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        # Not a usage batch: the warehouse migrations record what they applied.
        assert args and args[0] != "usage_events", "usage rows go in as Arrow batches"
        return self.client.insert(*args, **kwargs)

    def insert_arrow(self, table: str, arrow_table: Any, **kwargs: Any) -> Any:
        assert table == "usage_events" and not kwargs
        self.sizes.append(arrow_table.num_rows)
        return self.client.insert_arrow(table, arrow_table)


def test_inserts_are_batches_of_days_not_months(port: int) -> None:
    client = fresh_client(port)
    spy = _InsertSizes(client)
    # About 1,500 rows a day for 40 days: a tenant's month is ~60,000 rows.
    summary = generate_usage(
        spy,  # type: ignore[arg-type]
        ["solo"],
        date(2026, 3, 10),
        40,
        seed=5,
        events_per_tenant_day={"solo": 1_500.0},
        batch_rows=4_000,
    )
    assert client.command("SELECT count() FROM usage_events") == summary.rows_inserted
    assert sum(spy.sizes) == summary.rows_inserted > 40_000
    # A batch closes at the first day that takes it to 4,000 rows: never more than 4,000 plus
    # one day (a weekday here is ~1,500 x 7/5.9 queries plus 5 % ingests and 2 % duplicates).
    assert len(spy.sizes) >= summary.rows_inserted // 6_500
    assert max(spy.sizes) < 4_000 + 2_500


def test_generation_memory_does_not_grow_with_the_days(port: int) -> None:
    def peak(days: int) -> int:
        client = fresh_client(port)
        tracemalloc.start()
        try:
            generate_usage(
                client,
                ["long"],
                date(2026, 1, 1),
                days,
                seed=9,
                events_per_tenant_day={"long": 2_000.0},
                batch_rows=10_000,
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(10), peak(90)  # ~21,000 rows against ~190,000
    # Holding the 90 days at once would need far more than 2x the 10 days' peak.
    assert long < 2 * short, (short, long)


def test_the_arrow_inserts_store_what_a_row_by_row_insert_of_the_same_events_stores(
    port: int,
) -> None:
    tenants, start, days = ["west", "east"], date(2026, 6, 29), 4  # crosses into July
    arrow, rows = fresh_client(port), fresh_client(port)
    summary = generate_usage(arrow, tenants, start, days, seed=21, batch_rows=700)
    # The reference: the same events as Python values through clickhouse-connect's own
    # row insert (its Native writer, Python's UUID parsing), one insert per tenant-day.
    rows.command(USAGE_EVENTS_DDL)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _, chunk in usage_chunks(tenants, start, days, seed=21):
        rows.insert(
            "usage_events",
            [
                [
                    uuid.UUID(chunk["event_id"][i].decode()),
                    chunk["query_id"][i].decode(),
                    str(chunk["tenant_id"][i]),
                    epoch + timedelta(milliseconds=int(chunk["timestamp"][i])),
                    str(chunk["event_type"][i]),
                    int(chunk["tokens_used"][i]),
                    int(chunk["embeddings_count"][i]),
                    int(chunk["latency_ms"][i]),
                    epoch + timedelta(milliseconds=int(chunk["ingested_at"][i])),
                ]
                for i in range(chunk["timestamp"].size)
            ],
            column_names=list(USAGE_EVENTS_COLUMNS),
        )
    expected = rows.query(CONTENT_HASH).result_rows
    assert expected[0][0] == summary.rows_inserted > 1_000
    assert arrow.query(CONTENT_HASH).result_rows == expected


# What the warehouse held (CONTENT_HASH) for these seeds before the generator's drawing and id
# spelling were made faster: recorded from the earlier code, so any change to a draw, its order
# or how an id is spelled (not only a change between two runs of today's code) fails here.
PINNED = [
    (
        {"tenants": ["acme", "globex"], "start": date(2026, 2, 26), "days": 5, "seed": 13},
        (1949, 1872586634230948353),
        (1815, 35, 18, 102),
    ),
    (
        {
            "tenants": ["a", "b"],
            "start": date(2025, 11, 1),
            "days": 10,
            "seed": 7,
            "ingested_after": datetime(2025, 11, 4, tzinfo=UTC),
            "batch_rows": 777,
        },
        (5818, 3036120264379180421),
        (5428, 111, 75, 284),
    ),
]


@pytest.mark.parametrize(("kwargs", "content", "counts"), PINNED)
def test_a_seed_draws_the_events_it_drew_before_the_generator_was_made_faster(
    port: int, kwargs: dict[str, Any], content: tuple[int, int], counts: tuple[int, ...]
) -> None:
    client = fresh_client(port)
    summary = generate_usage(client, **kwargs)
    assert client.query(CONTENT_HASH).result_rows == [content]
    assert summary.rows_inserted == content[0]
    assert (
        summary.distinct_queries,
        summary.duplicates,
        summary.late_events,
        summary.embedding_events,
    ) == counts


DAILY_CONTENT = (
    "SELECT toDate(timestamp, 'UTC') AS day, count(), sum(cityHash64(event_id, query_id, "
    "tenant_id, timestamp, event_type, tokens_used, embeddings_count, latency_ms, ingested_at)) "
    "FROM usage_events GROUP BY day ORDER BY day"
)


def _daily_content(client: Client) -> dict[date, tuple[int, int]]:
    """Each UTC day's row count and content hash, as the warehouse holds them."""
    return {day: (n, h) for day, n, h in client.query(DAILY_CONTENT).result_rows}


def test_drawn_day_by_day_the_rows_are_the_same_and_each_day_is_whole_when_reported(
    port: int,
) -> None:
    tenants = [f"t{i}" for i in range(7)]
    # A leap February's end and batches far smaller than a day, so a day spans several inserts
    # and a batch would span days if the day's end did not store it.
    kwargs: dict[str, Any] = {
        "tenants": tenants,
        "start": date(2028, 2, 25),
        "days": 6,
        "seed": 31,
        "events_per_tenant_day": 90.0,
        "batch_rows": 700,
    }
    tenant_first, day_first = fresh_client(port), fresh_client(port)
    expected_summary = generate_usage(tenant_first, **kwargs)
    expected = _daily_content(tenant_first)
    assert list(expected) == [date(2028, 2, 25) + timedelta(days=d) for d in range(6)]
    seen: list[tuple[date, dict[date, tuple[int, int]]]] = []
    summary = generate_usage(
        day_first,
        on_day_stored=lambda day: seen.append((day, _daily_content(day_first))),
        **kwargs,
    )
    assert summary == expected_summary
    assert _daily_content(day_first) == expected
    # Reported once per day, in order; at each report the table held that day and the days
    # before it in full, and nothing of the days after.
    assert [day for day, _ in seen] == list(expected)
    for day, held in seen:
        assert held == {d: content for d, content in expected.items() if d <= day}


def test_days_without_rows_are_reported_too(port: int) -> None:
    seen: list[date] = []
    client = fresh_client(port)
    # Rows only ingested before the second day began: the later days have none.
    generate_usage(
        client,
        ["solo"],
        date(2026, 3, 1),
        4,
        seed=3,
        ingested_before=datetime(2026, 3, 2, tzinfo=UTC),
        on_day_stored=seen.append,
    )
    assert seen == [date(2026, 3, d) for d in range(1, 5)]
    assert set(_daily_content(client)) <= {date(2026, 3, 1)}


# The month's usage drawn in a child process (the simulated month's way): the same rows as drawn
# here, errors and exits reported, nothing drawn after the month gives up on it.
FEBRUARY = date(2026, 2, 1)
MONTHLY = {"acme": 900, "globex": 12_000, "initech": 45_000}


def test_a_drawing_in_its_own_process_inserts_what_one_here_inserts(port: int) -> None:
    here, there = fresh_client(port), fresh_database(port)
    # February and other sizes than the module's month: the drawing assumes neither.
    expected = generate_usage(here, TENANTS, FEBRUARY, 28, seed=5, monthly_queries=MONTHLY)
    with generation_process.drawing(
        f"http://127.0.0.1:{port}/{there}",
        TENANTS,
        start=FEBRUARY,
        days=28,
        seed=5,
        monthly_queries=MONTHLY,
    ) as job:
        assert job.process.pid != os.getpid()
        drawn_there = clickhouse_connect.get_client(host="127.0.0.1", port=port, database=there)
        by_day = _daily_content(here)
        job.wait_through(FEBRUARY + timedelta(days=9))
        assert job.stored_through is not None
        assert job.stored_through >= FEBRUARY + timedelta(days=9)
        # The tenth day and those before it are whole (later ones may be under way).
        held = _daily_content(drawn_there)
        assert {d: held[d] for d in held if d < FEBRUARY + timedelta(days=10)} == {
            d: content for d, content in by_day.items() if d < FEBRUARY + timedelta(days=10)
        }
        # A day after the window has no rows: it is stored once the drawing is done.
        job.wait_through(date(2026, 3, 5))
        assert job.stored_through == date(2026, 2, 28)
        drawn = job.result()
    assert drawn.summary == expected
    assert drawn.seconds > 0
    hashes = [client.query(CONTENT_HASH) for client in (here, drawn_there)]
    assert hashes[0].result_rows == hashes[1].result_rows
    assert hashes[0].result_rows[0][0] == expected.rows_inserted > 0


def test_an_error_in_the_process_is_raised_with_its_message(port: int) -> None:
    with (
        generation_process.drawing(
            f"http://127.0.0.1:{port}/{fresh_database(port)}",
            TENANTS,
            start=FEBRUARY,
            days=0,
            seed=5,
        ) as job,
        pytest.raises(generation_process.GenerationFailed, match="days must be positive, got 0"),
    ):
        job.result()
    assert job.process.exitcode == 0  # it reported the error and ended normally


def test_a_process_killed_mid_drawing_is_reported_with_its_exit_code(port: int) -> None:
    database = fresh_database(port)
    with _large_drawing(port, database) as job:
        assert job.process.pid is not None
        # It draws at a lower priority than the month that started it.
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, job.process.pid) == min(
            19, ours + generation_process.NICENESS
        )
        os.kill(job.process.pid, signal.SIGKILL)
        with pytest.raises(generation_process.GenerationFailed, match="exited with code -9"):
            job.result()


@pytest.mark.parametrize("ignoring_sigterm", [False, True])
def test_leaving_before_the_result_stops_the_drawing(port: int, ignoring_sigterm: bool) -> None:
    database = fresh_database(port)
    # Started from a process that ignores SIGTERM too: the child would inherit that.
    with _large_drawing(port, database, ignoring_sigterm=ignoring_sigterm) as job:
        pass  # left as soon as the first rows landed
    assert not job.process.is_alive()
    assert job.process.exitcode == -signal.SIGTERM
    # Whatever was in flight has landed by now; nothing more arrives after that.
    time.sleep(1.0)
    settled = _rows(port, database)
    time.sleep(2.0)
    assert _rows(port, database) == settled
    # 200 tenants' month is about 1.7 M events: the drawing was stopped well short of it.
    assert settled < 1_000_000


@contextmanager
def _large_drawing(
    port: int, database: str, *, ignoring_sigterm: bool = False
) -> Iterator[generation_process.GenerationJob]:
    """200 tenants' month (about 1.7 M events) drawn by a child, once its first day is stored
    (as the child reports it: polling the warehouse would queue behind its inserts)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if ignoring_sigterm else None
    try:
        with generation_process.drawing(
            f"http://127.0.0.1:{port}/{database}",
            [f"tenant_{i}" for i in range(200)],
            start=FEBRUARY,
            days=28,
            seed=5,
        ) as job:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
                previous = None
            job.wait_through(FEBRUARY)
            assert job.stored_through is not None and job.stored_through < date(2026, 2, 28)
            yield job
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _rows(port: int, database: str) -> int:
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, database=database)
    if not client.query("EXISTS TABLE usage_events").result_rows[0][0]:
        return 0
    return int(client.query("SELECT count() FROM usage_events").result_rows[0][0])
