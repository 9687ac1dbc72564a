"""The month's usage drawn in a child process: the same rows as drawn here, errors and exits
reported, nothing drawn after the month gives up on it."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import date

import clickhouse_connect
import pytest
from billing_sandbox import generation_process
from billing_sandbox.clickhouse_bridge import spawn_bridge
from billing_sandbox.usage_generator import generate_usage

TENANTS = ["acme", "globex", "initech", "umbrella"]
START = date(2026, 2, 1)  # February: the drawing must not assume 30 or 31 days
DAYS = 28
MONTHLY = {"acme": 900, "globex": 12_000, "initech": 45_000, "umbrella": 3_000}
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


def rows(port: int, database: str) -> int:
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, database=database)
    if not client.query("EXISTS TABLE usage_events").result_rows[0][0]:
        return 0
    return int(client.query("SELECT count() FROM usage_events").result_rows[0][0])


def test_a_drawing_in_its_own_process_inserts_what_one_here_inserts(port: int) -> None:
    here, there = fresh_database(port), fresh_database(port)
    expected = generate_usage(
        clickhouse_connect.get_client(host="127.0.0.1", port=port, database=here),
        TENANTS,
        START,
        DAYS,
        seed=5,
        monthly_queries=MONTHLY,
    )
    with generation_process.drawing(
        f"http://127.0.0.1:{port}/{there}",
        TENANTS,
        start=START,
        days=DAYS,
        seed=5,
        monthly_queries=MONTHLY,
    ) as job:
        assert job.process.pid != os.getpid()
        drawn = job.result()
    assert drawn.summary == expected
    assert drawn.seconds > 0
    hashes = [
        clickhouse_connect.get_client(host="127.0.0.1", port=port, database=db).query(CONTENT_HASH)
        for db in (here, there)
    ]
    assert hashes[0].result_rows == hashes[1].result_rows
    assert hashes[0].result_rows[0][0] == expected.rows_inserted > 0


def test_an_error_in_the_process_is_raised_with_its_message(port: int) -> None:
    with (
        generation_process.drawing(
            f"http://127.0.0.1:{port}/{fresh_database(port)}", TENANTS, start=START, days=0, seed=5
        ) as job,
        pytest.raises(generation_process.GenerationFailed, match="days must be positive, got 0"),
    ):
        job.result()
    assert job.process.exitcode == 0  # it reported the error and ended normally


def test_a_process_killed_mid_drawing_is_reported_with_its_exit_code(port: int) -> None:
    database = fresh_database(port)
    with generation_process.drawing(
        f"http://127.0.0.1:{port}/{database}",
        [f"tenant_{i}" for i in range(200)],
        start=START,
        days=DAYS,
        seed=5,
    ) as job:
        _wait_for_rows(port, database)
        assert job.process.pid is not None
        os.kill(job.process.pid, signal.SIGKILL)
        with pytest.raises(generation_process.GenerationFailed, match="exited with code -9"):
            job.result()


def test_leaving_before_the_result_stops_the_drawing(port: int) -> None:
    database = fresh_database(port)
    with generation_process.drawing(
        f"http://127.0.0.1:{port}/{database}",
        [f"tenant_{i}" for i in range(200)],
        start=START,
        days=DAYS,
        seed=5,
    ) as job:
        _wait_for_rows(port, database)
    assert not job.process.is_alive()
    assert job.process.exitcode == -signal.SIGTERM
    # Whatever was in flight has landed by now; nothing more arrives after that.
    time.sleep(1.0)
    settled = rows(port, database)
    time.sleep(2.0)
    assert rows(port, database) == settled
    # 200 tenants' month is about 1.7 M events: the drawing was stopped well short of it.
    assert settled < 1_000_000


def _wait_for_rows(port: int, database: str) -> None:
    """Until the child's first batch is in the warehouse (the drawing is under way)."""
    deadline = time.monotonic() + 60
    while rows(port, database) == 0:
        assert time.monotonic() < deadline, "the generation process inserted nothing in 60 s"
        time.sleep(0.1)
