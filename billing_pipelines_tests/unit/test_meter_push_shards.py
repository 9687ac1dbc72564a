"""Splitting a day's meter push across processes: which tenant goes where, and each one's share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pytest

from billing_pipelines.lib.metering.planning import MeterReport
from billing_pipelines.lib.metering.push import Pace
from billing_pipelines.lib.metering.shards import shard_of, shards_for, split
from billing_pipelines.lib.stripe.client import ClientSpec, RateLimits


def _report(tenant: str, metric: str = "queries") -> MeterReport:
    return MeterReport(tenant, metric, date(2026, 3, 9), 7, 1, f"{tenant}:{metric}", "cus", "e", 0)


_SHARDS_IN_A_FRESH_PROCESS = (
    "import json,sys; from billing_pipelines.lib.metering.shards import shard_of; "
    "print(json.dumps([shard_of(t, int(sys.argv[1])) for t in sys.argv[2:]]))"
)


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_a_tenant_goes_to_the_same_shard_in_every_process(shards: int) -> None:
    tenants = [f"acme-{i}" for i in range(40)] + ["", "ü-tenant", "t" * 300]
    here = [shard_of(t, shards) for t in tenants]
    for seed in ("1", "2"):  # Python's own str hash differs between these processes
        out = subprocess.run(
            [sys.executable, "-c", _SHARDS_IN_A_FRESH_PROCESS, str(shards), *tenants],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert json.loads(out) == here
    assert set(here) <= set(range(shards))


def test_shards_are_balanced_and_hold_each_event_once_in_push_order() -> None:
    reports = [_report(f"tenant-{i:05d}", m) for i in range(5000) for m in ("queries", "tokens")]
    parts = split(reports, 2)
    assert sorted(len(p) for p in parts)[0] >= 0.45 * len(reports)
    assert sorted(r.identifier for p in parts for r in p) == sorted(r.identifier for r in reports)
    for part in parts:
        positions = [reports.index(r) for r in part[:50]]
        assert positions == sorted(positions)
    # Both metrics of a tenant travel together.
    owner = {r.identifier: i for i, p in enumerate(parts) for r in p}
    assert all(
        owner[f"tenant-{i:05d}:queries"] == owner[f"tenant-{i:05d}:tokens"] for i in range(5000)
    )
    assert split(reports, 1) == [reports]


@pytest.mark.parametrize(
    ("rate", "events", "cpus", "expected"),
    [
        (20, 50_000, 8, 1),  # test mode: one process is plenty
        (400, 50_000, 8, 1),  # the default live share
        (501, 50_000, 8, 2),
        (1000, 5000, 2, 2),  # the live limit on two CPUs
        (1000, 5000, 1, 1),  # never more processes than CPUs
        (1000, 3999, 8, 1),  # too few events to pay for a second process
        (4000, 9000, 16, 4),
        (4000, 50_000, 16, 8),
    ],
)
def test_a_push_is_sharded_only_when_its_rate_and_its_day_need_it(
    rate: float, events: int, cpus: int, expected: int
) -> None:
    assert shards_for(rate, events, cpus) == expected


def test_each_shard_gets_its_share_of_every_budget_and_of_the_pace() -> None:
    spec = ClientSpec(
        api_key="sk_live_secret",
        api_base="https://api.stripe.com",
        max_network_retries=2,
        timeout_seconds=30,
        limits=RateLimits(80.0, 20.0, 800.0, retries_on_429=5),
    )
    half = spec.share(2)
    assert (half.limits.global_per_second, half.limits.endpoint_per_second) == (40.0, 10.0)
    assert half.limits.meter_events_per_second == 400.0 and half.limits.retries_on_429 == 5
    assert (half.api_key, half.api_base, half.max_network_retries) == (
        "sk_live_secret",
        "https://api.stripe.com",
        2,
    )
    test_mode = ClientSpec("sk_test_x", "http://127.0.0.1:1", 0, 5, RateLimits(20.0, 20.0, None))
    assert test_mode.share(4).limits.meter_events_per_second is None
    assert test_mode.share(4).limits.global_per_second == 5.0
    assert "sk_live_secret" not in repr(spec) and "sk_live_secret" not in repr(half)
    with pytest.raises(ValueError):
        spec.share(0)
    pace = Pace(requests_per_second=1000, workers=32, shards=None).share(3)
    assert (round(pace.requests_per_second, 3), pace.workers, pace.shards) == (333.333, 11, 1)
