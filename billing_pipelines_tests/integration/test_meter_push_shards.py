"""A meter push sent from several processes against the sandbox, embedded PostgreSQL and chDB:
every tenant billed once, the run's numbers the sum of its shards, nothing lost when one dies."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from billing_pipelines_tests.integration.test_meter_reports import (
    DAY,
    PREFIX,
    Env,
    metadata,
)
from billing_pipelines_tests.integration.test_meter_reports import env as env
from billing_pipelines_tests.support import shard_processes


def _tenants(env: Env, count: int) -> dict[str, int]:
    """`count` billable tenants, each with its own number of distinct queries on DAY."""
    sizes = {}
    for _ in range(count):
        tenant = env.tenant()
        sizes[tenant] = random.randint(1, 400)
        env.insert_queries(tenant, 1, sizes[tenant], copies=2)
    return sizes


def _ledger(env: Env) -> dict[str, int]:
    with psycopg.connect(env.database_url) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM usage_report_ledger WHERE tenant_id LIKE %s "
            "AND usage_date = %s GROUP BY status",
            (PREFIX + "%", DAY),
        ).fetchall()
    return {str(status): int(n) for status, n in rows}


def _stripe_events(env: Env, customers: set[str]) -> list[dict[str, object]]:
    return [
        e
        for e in env.sandbox.state.data.meter_events
        if e["payload"]["stripe_customer_id"] in customers
    ]


def test_a_push_from_two_processes_bills_every_tenant_once_and_reports_the_sum(env: Env) -> None:
    sizes = _tenants(env, 16)
    result = env.push(requests_per_second=20, shards=2)
    assert result.success, result.all_events
    meta = metadata(result)
    assert (meta["shards"], meta["sent"], meta["already_delivered"]) == (2, 16, 0)
    assert meta["total_queries"] == sum(sizes.values())
    assert meta["billable_tenants"] == 16
    assert {t: env.stripe_day_total(t) for t in sizes} == sizes
    assert _ledger(env) == {"delivered": 16}
    events = _stripe_events(env, {env.customer(t) for t in sizes})
    assert len(events) == 16 == len({e["identifier"] for e in events})


@pytest.fixture
def killer(env: Env) -> Iterator[dict[str, object]]:
    """Kills one shard's process once Stripe has some of the day's events (by its pid)."""
    seen: dict[str, object] = {"killed": None, "events_then": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            delivered = len(env.sandbox.state.data.meter_events)
            shards = shard_processes()
            if delivered >= 8 and shards:
                seen["events_then"] = delivered
                os.kill(shards[0], signal.SIGKILL)
                seen["killed"] = shards[0]
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    seen["start"] = thread.start
    try:
        yield seen
    finally:
        stop.set()


def test_a_shard_killed_mid_push_fails_the_run_and_the_rerun_bills_each_tenant_once(
    env: Env, killer: dict[str, object]
) -> None:
    sizes = _tenants(env, 40)
    start = killer["start"]
    assert callable(start)
    start()
    failed = env.push(requests_per_second=8, shards=2)
    assert killer["killed"] is not None
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "shard's process died" in str(failure.event_specific_data)
    assert "exited with -9" in str(failure.event_specific_data)  # the SIGKILL, named
    customers = {env.customer(t) for t in sizes}
    after_kill = _stripe_events(env, customers)
    assert 8 <= len(after_kill) < 40  # the push stopped part way
    ledger = _ledger(env)
    # Every row was written before any call; what the killed shard did not confirm is still
    # pending (the other shard finished and confirmed its own).
    assert sum(ledger.values()) == 40 and ledger.get("pending", 0) > 0
    assert ledger.get("delivered", 0) <= len(after_kill)

    rerun = env.push(requests_per_second=20, shards=2)
    assert rerun.success, rerun.all_events
    meta = metadata(rerun)
    assert meta["sent"] + meta["already_delivered"] == ledger.get("pending", 0)
    assert meta["sent"] == 40 - len(after_kill)
    assert _ledger(env) == {"delivered": 40}
    assert {t: env.stripe_day_total(t) for t in sizes} == sizes
    events = _stripe_events(env, customers)
    assert len(events) == 40 == len({e["identifier"] for e in events})
