"""PostgreSQL restarted mid-operation: a webhook burst and a meter push lose nothing, double
nothing, and the receiver's and the push's database clients reconnect on their own.

The tests own a private embedded PostgreSQL (the session's shared one is never restarted): it is
stopped and started again on the same data folder and port from a thread, while the real
receiver (under uvicorn) or the real `stripe_meter_reports` asset is using it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import stripe

from billing_pipelines.lib import migrations
from billing_pipelines.sandbox import postgres
from billing_pipelines.sandbox.stripe import SandboxHandle, Settings
from billing_pipelines.webhooks import ReceiverConfig
from billing_pipelines_tests.webhook_harness import (
    ReceiverServer,
    free_port,
    query,
    register_endpoint,
)

BURST = 300  # webhook events in the burst
TENANTS = 240  # tenants in the meter push (one metered metric each)


# ---- a private PostgreSQL we may restart --------------------------------------------------------


@dataclass
class RestartablePostgres:
    """An embedded PostgreSQL of this module's own: restarting it disturbs no other test."""

    data_dir: Path
    port: int
    admin_url: str
    restarts: int = 0

    def fresh_database(self) -> str:
        """A new, migrated billing database on this server."""
        name = f"billing_{uuid.uuid4().hex[:10]}"
        url = postgres.ensure_databases(self.admin_url, (name,))[name]
        migrations.upgrade_to_head(url)
        return url

    def restart(self) -> None:
        """Fast shutdown (every session is cut), then start on the same folder and port."""
        postgres.stop(self.data_dir)
        assert not postgres.is_running(self.data_dir)
        postgres.start(self.data_dir, self.port)
        self.restarts += 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartablePostgres]:
    data_dir = tmp_path_factory.mktemp("restartable_postgres") / "data"
    port = free_port()
    admin_url = postgres.start(data_dir, port)
    try:
        yield RestartablePostgres(data_dir, port, admin_url)
    finally:
        postgres.stop(data_dir)


class RestartWhen(threading.Thread):
    """Restarts the server from a background thread as soon as `ready()` holds."""

    def __init__(
        self, server: RestartablePostgres, ready: Callable[[], bool], timeout: float = 60
    ) -> None:
        super().__init__(name="postgres-restart", daemon=True)
        self.server, self.ready, self.timeout = server, ready, timeout
        self.error: BaseException | None = None
        self.restarted = threading.Event()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while not self.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError("the restart trigger never fired")
                time.sleep(0.002)
            self.server.restart()
            self.restarted.set()
        except BaseException as exc:  # reported by finish() on the test's thread
            self.error = exc

    def finish(self) -> None:
        """Wait for the restart and re-raise anything that went wrong in it."""
        self.join(timeout=self.timeout + 60)
        if self.error is not None:
            raise self.error
        assert self.restarted.is_set()


# ---- 1. a webhook burst -------------------------------------------------------------------------


def _metric(metrics: str, name: str) -> float:
    """Sum of every sample of a Prometheus metric (all label sets)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_webhook_burst_across_a_postgres_restart_is_stored_exactly_once(
    server: RestartablePostgres,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
) -> None:
    db_url = server.fresh_database()
    port = free_port()
    secret = register_endpoint(stripe_client, f"http://127.0.0.1:{port}/webhooks/stripe")
    receiver = ReceiverServer(
        ReceiverConfig(database_url=db_url, secrets=[secret], pool_timeout_seconds=0.5), port=port
    )
    # Stripe-like retries, compressed: they outlast a restart (about a second) many times over.
    stripe_sandbox.state.settings = Settings(
        webhook_backoff_seconds=[0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8]
    )
    dispatcher = stripe_sandbox.state.webhooks
    assert dispatcher is not None

    def stored_a_third() -> bool:
        return sum(d.status == 200 for d in dispatcher.deliveries) >= BURST // 3

    restart = RestartWhen(server, stored_a_third)
    try:
        restart.start()
        for i in range(BURST):
            stripe_client.v1.customers.create({"email": f"burst{i}@tenant.example"})
        restart.finish()
        assert dispatcher.drain(60), "deliveries did not settle after the restart"

        events = [e.id for e in stripe_client.v1.events.list({"limit": 100}).auto_paging_iter()]
        assert len(events) == len(set(events)) == BURST
        rows = query(db_url, "SELECT event_id FROM webhook_events")
        stored = Counter(r["event_id"] for r in rows)
        assert set(stored) == set(events)  # nothing lost
        assert max(stored.values()) == 1 and len(rows) == BURST  # nothing doubled

        statuses = Counter(d.status for d in dispatcher.deliveries)
        # The outage was seen: only 200s and 503s, never a 5xx of another kind, never a
        # connection error (the receiver itself stayed up).
        assert set(statuses) == {200, 503}, statuses
        assert not [d.error for d in dispatcher.deliveries if d.error]
        assert not dispatcher.given_up
        # The sandbox stops retrying an event at its first 2xx: one 2xx per event and every
        # event stored means no 2xx was ever given for an event that was not stored.
        acks = Counter(d.event_id for d in dispatcher.deliveries if d.status == 200)
        assert set(acks) == set(events) and set(acks.values()) == {1}
        metrics = httpx.get(f"{receiver.url}/metrics").text
        assert _metric(metrics, "billing_webhook_events_accepted_total") == BURST
        assert (
            _metric(
                metrics, 'billing_webhook_requests_rejected_total{reason="database_unavailable"}'
            )
            == statuses[503]
        )

        # The same receiver, never restarted, serves again: after a quiet restart its pool
        # must not hand out a dead connection, so the very first delivery is stored.
        server.restart()
        before = len(dispatcher.deliveries)
        customer = stripe_client.v1.customers.create({"email": "after@tenant.example"})
        assert dispatcher.drain(30)
        (first,) = dispatcher.deliveries[before:]
        assert (first.attempt, first.status) == (0, 200)
        row = query(
            db_url,
            "SELECT event_type, object_id FROM webhook_events WHERE event_id = %s",
            (first.event_id,),
        )
        assert row == [{"event_type": "customer.created", "object_id": customer.id}]
        assert httpx.get(f"{receiver.url}/readyz").status_code == 200
    finally:
        receiver.stop()
