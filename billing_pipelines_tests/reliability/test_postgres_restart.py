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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import psycopg
import pytest
import stripe
from billing_sandbox import postgres
from billing_sandbox.stripe import SandboxHandle, SandboxState, Settings
from billing_sandbox.stripe.app import TEST_MODE_GLOBAL_LIMIT

from billing_pipelines.defs.metering.assets import stripe_catalog, stripe_meter_reports
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib.pg import database, migrations
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.webhooks import ReceiverConfig
from billing_pipelines_tests.integration.test_meter_reports import DAY, PREFIX, metadata
from billing_pipelines_tests.support import API_KEY, unthrottled_client
from billing_pipelines_tests.webhook_harness import (
    ReceiverServer,
    free_port,
    query,
    register_endpoint,
)

BURST = 300  # webhook events in the burst
TENANTS = 200  # tenants in the meter push (one metered metric each)


# ---- a private PostgreSQL we may restart --------------------------------------------------------


@dataclass
class RestartablePostgres:
    """An embedded PostgreSQL of this module's own: restarting it disturbs no other test."""

    data_dir: Path
    port: int
    admin_url: str

    def fresh_database(self) -> str:
        """A new, migrated billing database on this server."""
        name = f"billing_{uuid.uuid4().hex[:10]}"
        url = postgres.ensure_databases(self.admin_url, (name,))[name]
        migrations.upgrade_to_head(url)
        return url

    def restart(self, between: Callable[[], object] = lambda: None) -> None:
        """Fast shutdown (every session is cut), then start on the same folder and port."""
        postgres.stop(self.data_dir)
        assert not postgres.is_running(self.data_dir)
        between()
        postgres.start(self.data_dir, self.port)


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
        self,
        server: RestartablePostgres,
        ready: Callable[[], bool],
        while_down: Callable[[], int] = lambda: 0,
        timeout: float = 60,
    ) -> None:
        super().__init__(name="postgres-restart", daemon=True)
        self.server, self.ready, self.while_down, self.timeout = server, ready, while_down, timeout
        self.error: BaseException | None = None
        self.restarted = threading.Event()
        self.seen_while_down = -1  # what `while_down()` said with the server stopped

    def _look(self) -> None:
        self.seen_while_down = self.while_down()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while not self.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError("the restart trigger never fired")
                time.sleep(0.002)
            self.server.restart(between=self._look)
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
    # Stripe-like retries, compressed: they outlast a restart (a second or two) many times over.
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
        metrics = httpx.get(receiver.metrics_url).text
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


# ---- 2. a meter push ----------------------------------------------------------------------------

QUERIES_EVENT = "rag_api_queries"  # the catalog's one metered metric


def _billable_tenants(client: stripe.StripeClient, db_url: str, count: int) -> list[str]:
    """`count` tenants on the pro plan, each a Stripe customer with a card and a subscription.

    What the push needs of a tenant, in three requests each (customer, card, subscription with
    the card as its default) and one price lookup for all, instead of five each.
    """
    prices = client.v1.prices.list(
        {"lookup_keys": ["pro_base_monthly", "pro_queries_overage_monthly"]}
    ).data
    assert len(prices) == 2

    def one(_: int) -> tuple[str, str, str]:
        tenant_id = f"{PREFIX}{uuid.uuid4().hex[:8]}"
        customer = client.v1.customers.create({"metadata": {"tenant_id": tenant_id}})
        card = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
        subscription = client.v1.subscriptions.create(
            {
                "customer": customer.id,
                "items": [{"price": p.id} for p in prices],
                "default_payment_method": card.id,
            }
        )
        assert subscription.status == "active"
        return tenant_id, customer.id, subscription.id

    with ThreadPoolExecutor(4) as workers:  # overlaps the SDK's round trips under one budget
        made = list(workers.map(one, range(count)))
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
            "stripe_subscription_id) VALUES (%s, %s, %s, 'pro', %s, %s)",
            [(t, t, f"{t}@example.com", cus, sub) for t, cus, sub in made],
        )
    return [tenant_id for tenant_id, _, _ in made]


def _accepted(state: SandboxState) -> list[dict[str, Any]]:
    """Meter events the sandbox accepted (a duplicate identifier is refused, not stored)."""
    with state.lock:
        return [e for e in state.data.meter_events if e["event_name"] == QUERIES_EVENT]


def test_meter_push_across_a_postgres_restart_bills_every_tenant_exactly_once(
    server: RestartablePostgres, stripe_sandbox: SandboxHandle
) -> None:
    db_url = server.fresh_database()
    resources = {
        "billing_db": BillingDatabase(url=db_url),
        "stripe": StripeResource(
            api_key=API_KEY, api_base=stripe_sandbox.url, max_network_retries=0
        ),
        # Opened only for a day that a period boundary splits; none here.
        "warehouse": UsageWarehouse(url="http://127.0.0.1:9/unused"),
    }
    assert dg.materialize([stripe_catalog], resources=resources).success
    # The final reads are the test's own requests, not the push's: they use the sandbox's
    # whole test-mode limit (the fixture's client keeps a share of it for others).
    setup = stripe_api.make_client(
        API_KEY,
        api_base=stripe_sandbox.url,
        max_network_retries=0,
        limits=stripe_api.RateLimits(
            global_per_second=TEST_MODE_GLOBAL_LIMIT,
            endpoint_per_second=TEST_MODE_GLOBAL_LIMIT,
            meter_events_per_second=None,
        ),
    )
    # The warehouse is not part of this fault: the day's usage is stored as daily_tenant_usage
    # stores it, and the push reads it from the database that restarts.
    with unthrottled_client(stripe_sandbox.state) as unthrottled:
        tenants = _billable_tenants(unthrottled, db_url, TENANTS)
    usage = {tenant: 1_000 + 37 * i for i, tenant in enumerate(tenants)}
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO daily_tenant_usage (usage_date, tenant_id, billable_queries, tokens, "
            "embeddings, raw_events, duplicate_events) VALUES (%s, %s, %s, 0, 0, %s, 0)",
            [(DAY, tenant, queries, queries) for tenant, queries in usage.items()],
        )

    def push() -> dg.ExecuteInProcessResult:
        # Paced well below the push's ceiling so the restart lands while it is sending.
        return dg.materialize(
            [stripe_meter_reports],
            partition_key=DAY.isoformat(),
            resources=resources,
            run_config={
                "ops": {
                    "stripe_meter_reports": {"config": {"requests_per_second": 60, "workers": 4}}
                }
            },
            raise_on_error=False,
        )

    state = stripe_sandbox.state
    restart = RestartWhen(
        server,
        ready=lambda: len(_accepted(state)) >= TENANTS // 3,
        while_down=lambda: len(_accepted(state)),
    )
    restart.start()
    first = push()
    restart.finish()

    # The server went down mid-push (Stripe had part of the day, not all of it) and took the
    # connection holding the day's lock with it: the run fails, and says why. Depending on
    # what was in flight it fails at once (a ledger write cut) or at the end (the lock's
    # commit), after its pool reconnected and confirmed the rest.
    assert TENANTS // 3 <= restart.seen_while_down < TENANTS
    assert not first.success
    (failure,) = [e for e in first.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "billing database connection was lost during the meter push" in str(
        failure.event_specific_data
    )
    ledger = "SELECT status, count(*) FROM usage_report_ledger WHERE usage_date = %s GROUP BY 1"
    with psycopg.connect(db_url) as conn:
        statuses: dict[str, int] = dict(conn.execute(ledger, (DAY,)).fetchall())
    # Every row was written before its call; only what Stripe accepted may be confirmed.
    assert sum(statuses.values()) == TENANTS
    confirmed, accepted_first = statuses.get("delivered", 0), len(_accepted(state))
    assert confirmed <= accepted_first

    # The re-run sends what Stripe never got and recognises what it got but the ledger had
    # not confirmed (same identifiers): none of it is added twice.
    second = push()
    assert second.success
    meta = metadata(second)
    assert meta["sent"] == TENANTS - accepted_first
    assert meta["already_delivered"] == accepted_first - confirmed
    assert meta["unchanged"] == confirmed
    with psycopg.connect(db_url) as conn:
        assert dict(conn.execute(ledger, (DAY,)).fetchall()) == {"delivered": TENANTS}
        versions = conn.execute("SELECT DISTINCT value_version FROM usage_report_ledger").fetchall()
        stored: dict[str, int] = dict(
            conn.execute(
                "SELECT t.stripe_customer_id, u.billable_queries FROM daily_tenant_usage u "
                "JOIN tenants t USING (tenant_id) WHERE u.usage_date = %s",
                (DAY,),
            ).fetchall()
        )
    assert versions == [(1,)]  # one value per tenant and day: nothing re-versioned

    # Stripe accepted exactly one meter event per tenant and metric, each identifier once ...
    accepted = _accepted(state)
    assert len(accepted) == TENANTS
    assert len({e["identifier"] for e in accepted}) == TENANTS
    assert sorted(e["payload"]["stripe_customer_id"] for e in accepted) == sorted(stored)
    # ... and its day totals (the meter event summaries API) equal the stored usage exactly.
    meter_id = stripe_meters.active_meter_ids(setup)[QUERIES_EVENT]
    billed = {
        customer: int(stripe_meters.day_total(setup, meter_id, customer, DAY))
        for customer in stored
    }
    assert billed == stored
    assert sum(billed.values()) == sum(usage.values()) == TENANTS * 1_000 + 37 * sum(range(TENANTS))


# ---- 3. the pool behind BillingDatabase ---------------------------------------------------------


def test_billing_database_pool_serves_the_first_transaction_after_a_restart(
    server: RestartablePostgres,
) -> None:
    db_url = server.fresh_database()
    # A short checkout timeout: a pool that backed off once per dead socket (about 1 + 2 + 4 s
    # for the idle ones here) would give up; dropping them all at once takes one reconnect.
    pool = database.open_pool(db_url, max_size=5, timeout=2.0)
    try:
        held = [pool.getconn() for _ in range(5)]
        for conn in held:
            pool.putconn(conn)  # five idle connections, all about to die
        server.restart()
        with database.transaction(pool) as conn:
            conn.execute(
                "INSERT INTO tenants (tenant_id, name, email, plan) "
                "VALUES ('after-restart', 'A', 'a@example.com', 'pro')"
            )
        with database.transaction(pool) as conn:
            rows = conn.execute("SELECT tenant_id FROM tenants").fetchall()
        assert rows == [{"tenant_id": "after-restart"}]
        assert pool.get_stats()["connections_lost"] >= 4
    finally:
        pool.close()
