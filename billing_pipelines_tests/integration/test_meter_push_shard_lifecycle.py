"""A meter push shard's life: it stops when the run that started it dies, and a shard whose push
raised names its error in the run's failure."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from billing_sandbox.stripe import run_in_thread

from billing_pipelines.lib.metering.planning import MeterReport
from billing_pipelines.lib.metering.push import Pace, ShardTarget
from billing_pipelines.lib.metering.shards import ShardLost, send_sharded
from billing_pipelines.lib.stripe.client import ClientSpec, RateLimits
from billing_pipelines_tests.support import API_KEY, shard_processes

EVENT_NAME = "orphan_check_queries"
EVENTS = 400

# The run: sends EVENTS meter events from two shards at 4 events/s in all (about 100 s). It
# ignores SIGTERM, as processes under some supervisors and test runners do: its shards inherit
# that, and must stop all the same.
_RUN = f"""
import logging, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
from datetime import date
from billing_pipelines.lib.metering.planning import MeterReport
from billing_pipelines.lib.metering.push import Pace, ShardTarget
from billing_pipelines.lib.metering.shards import send_sharded
from billing_pipelines.lib.stripe.client import ClientSpec, RateLimits
url, database_url, key, tag = sys.argv[1:5]
stamp = int(time.time()) - 3600
reports = [
    MeterReport(f"t{{i}}", "queries", date.today(), i + 1, 1, f"{{tag}}-{{i}}", f"cus_{{i}}",
                "{EVENT_NAME}", stamp, ledger_id=10**12 + i)
    for i in range({EVENTS})
]
spec = ClientSpec(key, url, 0, 10.0, RateLimits.for_key(key))
send_sharded(reports, Pace(requests_per_second=4.0, workers=2), 2,
             ShardTarget(spec, database_url), logging.getLogger("run"))
"""


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie nobody has reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition: object, what: str, seconds: float = 60.0) -> None:
    """Poll `condition()` until it holds; fail naming `what` if it never does."""
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_shards_stop_sending_when_the_run_that_started_them_is_killed(
    fresh_database_url: str,
) -> None:
    sandbox = run_in_thread(port=0, seed=random.randrange(1, 10**9))
    tag = f"orphan-{random.randrange(10**9)}"

    def sent() -> int:
        events = list(sandbox.state.data.meter_events)
        return sum(1 for e in events if e["identifier"].startswith(tag))

    shards: list[int] = []
    run = subprocess.Popen(
        [sys.executable, "-c", _RUN, sandbox.url, fresh_database_url, API_KEY, tag],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    try:
        # Two shards: one sends from the run's process, the other from a process of its own.
        _wait_for(lambda: sent() >= 4 and len(shard_processes(run.pid)) == 1, "sending")
        shards.extend(shard_processes(run.pid))
        os.kill(run.pid, signal.SIGKILL)  # the run's process, by its id
        run.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in shards), "the shards stopped", 30.0)
        stopped_at = sent()
        assert stopped_at < EVENTS
        time.sleep(1.0)  # two more events' worth at the shards' pace, had any survived
        assert sent() == stopped_at
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pid in shards or shard_processes(run.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # the test's own shards, if they outlived the run
        sandbox.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when this returns: nobody listens


def test_a_shard_whose_database_is_unreachable_fails_the_push_with_the_database_error() -> None:
    password = f"pw{random.randrange(10**9)}"
    database_url = f"postgresql://billing:{password}@127.0.0.1:{_closed_port()}/billing"
    spec = ClientSpec(API_KEY, "http://127.0.0.1:9", 0, 5.0, RateLimits.for_key(API_KEY))
    reports = [
        MeterReport(f"t{i}", "queries", date(2026, 3, 9), 1, 1, f"x-{i}", "cus_x", "e", 0, i + 1)
        for i in range(6)
    ]
    with pytest.raises(ShardLost) as caught:
        send_sharded(
            reports,
            Pace(requests_per_second=10.0, workers=2),
            2,
            ShardTarget(spec, database_url),
            logging.getLogger("test"),
        )
    message = str(caught.value)
    # Each shard names the error it raised (the run's own and its process's), not only its
    # exit status.
    assert "shard 1 failed: psycopg.OperationalError: " in message, message
    assert "shard 2 failed: psycopg.OperationalError: " in message, message
    assert "Connection refused" in message or "connection" in message.lower()
    assert "exited with" not in message
    assert password not in message and API_KEY not in message
