"""Stripe failing 20 % of requests (429s, 500s before the work, 500s after it) during a meter
push and during a reconciliation: same totals and findings as without faults, nothing doubled.

Faults come from the Stripe sandbox itself (`fault_rate`, `fault_after_rate`, `throttle_rate`):
a second front door over the same sandbox state, seeded, through which only the code under test
talks; the state's fault rates are on only while it runs, so set-up and verification see a
fault-free Stripe.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
import pytest
from billing_sandbox.stripe import FaultRates, SandboxHandle, SandboxState, run_in_thread

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    subscription_state_diff,
)
from billing_pipelines.defs.reconciliation.jobs import subscription_remediation_job
from billing_pipelines.defs.resources import StripeResource
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.stripe import snapshots as stripe_snapshots
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines_tests.integration.reconciliation import support as recon
from billing_pipelines_tests.integration.test_meter_reports import (  # noqa: F401 - fixture
    DAY,
    PREFIX,
    Env,
    env,
    metadata,
)
from billing_pipelines_tests.support import API_KEY, unthrottled_client
from billing_pipelines_tests.webhook_harness import (  # noqa: F401 - fixture
    billing_db_url,
    query,
)

SEED = 20260108
TENANTS = 240


@contextmanager
def faulty_door(state: SandboxState) -> Iterator[SandboxHandle]:
    """A second sandbox server over the same state whose fault draws are seeded with SEED;
    the state fails 20 % of requests until the block ends (only the code under test calls
    Stripe meanwhile), then set-up and verification see a fault-free Stripe again."""
    # 20 % of requests fail: 10 % rate-limited (429), 5 % 500 before the work, 5 % 500 after it.
    handle = run_in_thread(
        port=0, state=state, seed=SEED, throttle_rate=0.10, fault_rate=0.05, fault_after_rate=0.05
    )
    try:
        yield handle
    finally:
        state.faults = FaultRates()
        handle.stop()


def faults_seen(handle: SandboxHandle) -> Counter[tuple[str, str]]:
    """What the faulty door injected, by (kind, HTTP method)."""
    return Counter(handle.app.state.faults)


def requests_seen(handle: SandboxHandle) -> Counter[str]:
    """Every request the faulty door received, by HTTP method."""
    return Counter(handle.app.state.requests)


def production_stripe(url: str) -> StripeResource:
    """The Stripe resource as production configures it: the SDK retries 5xx 3 times itself."""
    return StripeResource(api_key=API_KEY, api_base=url, max_network_retries=3)


# ---- a meter push of a few hundred tenants -----------------------------------------------------


def _insert_queries(meters: Env, counts: dict[str, int]) -> None:
    """`counts[tenant]` distinct queries per tenant on DAY, in one insert (ids as the
    integration helper `Env.insert_queries` makes them: `<tenant>-q<n>`)."""
    start, _ = wh.day_bounds(DAY)
    wh.connect(meters.clickhouse_url).command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
            tokens_used, embeddings_count, latency_ms)
        SELECT generateUUIDv4(), concat(tc.1, '-q', toString(n)), tc.1,
               {start:DateTime64(3, 'UTC')} + toIntervalSecond(n % 80000), 'query', 12, 1, 40
        FROM (SELECT arrayJoin(arrayZip({tenants:Array(String)}, {counts:Array(UInt64)})) AS tc)
        ARRAY JOIN range(tc.2) AS n
        """,
        parameters={"start": start, "tenants": list(counts), "counts": list(counts.values())},
    )


def _billable_tenants(meters: Env, count: int) -> dict[str, str]:
    """`count` tenants with a Stripe customer and a Pro subscription; tenant -> customer."""
    c = meters.setup  # no rate limit: the push under test meets them
    prices = [
        p.id
        for p in c.v1.prices.list(
            {"lookup_keys": ["pro_base_monthly", "pro_queries_overage_monthly"]}
        ).data
    ]
    out: dict[str, str] = {}
    rows = []
    for i in range(count):
        tenant_id = f"{PREFIX}fault-{i:04d}"
        customer = c.v1.customers.create({"metadata": {"tenant_id": tenant_id}})
        sub = c.v1.subscriptions.create(
            {"customer": customer.id, "items": [{"price": p} for p in prices]}
        )
        out[tenant_id] = customer.id
        rows.append((tenant_id, tenant_id, f"{tenant_id}@example.com", customer.id, sub.id))
    with psycopg.connect(meters.database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
            "stripe_subscription_id) VALUES (%s, %s, %s, 'pro', %s, %s)",
            rows,
        )
    return out


def test_meter_push_with_20_percent_429_and_500_faults_delivers_every_total_once(
    env: Env,  # noqa: F811 - the imported fixture
) -> None:
    """A push meeting 429s and 500s (before and after Stripe did the work) bills the truth once."""
    tenants = _billable_tenants(env, TENANTS)
    rng = random.Random(SEED)
    truth = {t: rng.randrange(1, 5000) for t in tenants}
    _insert_queries(env, truth)

    with faulty_door(env.sandbox.state) as door:
        result = dg.materialize(
            [daily_tenant_usage, stripe_meter_reports],
            partition_key=DAY.isoformat(),
            resources={**env.resources, "stripe": production_stripe(door.url)},
            run_config={"ops": {"stripe_meter_reports": {"config": {"requests_per_second": 400}}}},
            raise_on_error=False,
        )
    faults = faults_seen(door)
    requests = requests_seen(door)

    assert result.success
    pushed = metadata(result)
    # Every total delivered; those whose answer was lost after Stripe did the work were
    # replayed by their idempotency key ("already delivered"), not sent again.
    assert pushed["sent"] + pushed["already_delivered"] == TENANTS
    assert 1 <= pushed["already_delivered"] <= faults[("after", "POST")]
    # Every failed write was asked again: each 429 by the client's rate policy, each 500 by the
    # SDK's retries (with the same idempotency key), so the door saw at least one more POST per
    # injected failure than there were events to deliver.
    assert requests["POST"] >= TENANTS + sum(
        n for (_, method), n in faults.items() if method == "POST"
    )
    # The faults really happened, on the meter-event writes too, at about 20 %.
    assert faults[("throttle", "POST")] > 0 and faults[("before", "POST")] > 0
    assert faults[("after", "POST")] > 0
    injected = sum(faults.values())
    assert 0.12 < injected / sum(requests.values()) < 0.28

    # Stripe holds exactly the warehouse truth for every tenant (what a fault-free push sends).
    # One accepted meter event per tenant: no retry, replay or re-send was counted twice ...
    events = env.sandbox.state.data.meter_events
    per_customer = Counter(e["payload"]["stripe_customer_id"] for e in events)
    assert len(events) == TENANTS and set(per_customer.values()) == {1}
    assert len({e["identifier"] for e in events}) == TENANTS
    # ... carrying exactly the warehouse truth (what a fault-free push sends) for every tenant,
    held = {e["payload"]["stripe_customer_id"]: int(e["payload"]["value"]) for e in events}
    assert {t: held[c] for t, c in tenants.items()} == truth
    # and Stripe's meter summaries (the fault-free door) bill that truth.
    sample = sorted(tenants)[::12]
    assert {t: env.stripe_day_total(t) for t in sample} == {t: truth[t] for t in sample}
    # The ledger says delivered for every tenant, one version each.
    ledger = query(
        env.database_url,
        "SELECT status, value_version, count(*) AS n FROM usage_report_ledger "
        "WHERE tenant_id LIKE %s GROUP BY status, value_version",
        (PREFIX + "fault-%",),
    )
    assert ledger == [{"status": "delivered", "value_version": 1, "n": TENANTS}]


# ---- a reconciliation and its remediation --------------------------------------------------------

DIFF = [stripe_subscription_snapshot, stripe_invoice_snapshot, subscription_state_diff]
SNAPSHOT_TABLES = {
    "stripe_customer_snapshots": "customer_id",
    "stripe_subscription_snapshots": "subscription_id",
    "stripe_invoice_snapshots": "invoice_id",
    "stripe_invoice_line_snapshots": "line_id",
}


def _snapshot(db_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every snapshot row (without when it was taken) and every finding, in a stable order."""
    out = {
        table: [
            {k: v for k, v in row.items() if k != "taken_at"}
            for row in query(db_url, f"SELECT * FROM {table} ORDER BY {key}")
        ]
        for table, key in SNAPSHOT_TABLES.items()
    }
    out["findings"] = query(
        db_url,
        "SELECT category, revenue_leak, tenant_id, customer_id, subscription_id, detail "
        "FROM subscription_state_findings ORDER BY category, tenant_id, subscription_id",
    )
    return out


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 2 instead of 100: a few dozen objects make ~60 pages, each one a chance to
    meet a fault in the middle of a listing (the cursor must not skip or repeat a page)."""
    monkeypatch.setattr(stripe_snapshots, "PAGE", 2)


def test_reconciliation_with_20_percent_faults_on_reads_matches_a_fault_free_run(
    stripe_sandbox: SandboxHandle,
    billing_db_url: str,  # noqa: F811 - the imported fixture
    small_pages: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Snapshots and findings under 20 % read faults equal a fault-free run of the same state;
    remediation under faults converges every flagged tenant and writes nothing to Stripe."""
    monkeypatch.delenv("ALERT_EMAIL", raising=False)
    monkeypatch.delenv("ALERT_CHAT_WEBHOOK_URL", raising=False)
    leaking = ["t-03", "t-17", "t-29"]
    with unthrottled_client(stripe_sandbox.state) as c:
        recon.catalog(c)
        subscriptions = {
            f"t-{i:02d}": recon.tenant(c, billing_db_url, f"t-{i:02d}")[1] for i in range(36)
        }
        # Drift the tenant database cannot see: cancelled in Stripe directly, no webhook.
        for tenant_id in leaking:
            c.v1.subscriptions.cancel(subscriptions[tenant_id])

    clean = dg.materialize(DIFF, resources=recon.resources(stripe_sandbox.url, billing_db_url))
    assert clean.success
    expected = _snapshot(billing_db_url)
    assert len(expected["stripe_subscription_snapshots"]) == 36
    assert len(expected["stripe_invoice_snapshots"]) == 36
    assert {(f["category"], f["tenant_id"]) for f in expected["findings"]} == {
        ("canceled_in_stripe_active_locally", t) for t in leaking
    }
    objects_before = stripe_sandbox.state.data.seq  # every object Stripe ever created

    with faulty_door(stripe_sandbox.state) as door:
        resources = {
            **recon.resources(door.url, billing_db_url),
            "stripe": production_stripe(door.url),
        }
        faulty = dg.materialize(DIFF, resources=resources)
        assert faulty.success
        observed = _snapshot(billing_db_url)
        remediated = subscription_remediation_job.execute_in_process(
            resources=resources,
            run_config={"ops": {"remediate_subscription_state": {"config": {"dry_run": False}}}},
        )
    faults = faults_seen(door)
    requests = requests_seen(door)

    assert faults[("throttle", "GET")] > 0 and faults[("before", "GET")] > 0
    assert faults[("after", "GET")] > 0
    assert 0.12 < sum(faults.values()) / sum(requests.values()) < 0.28
    # The same customers, subscriptions, invoices, lines and findings as without faults.
    assert observed == expected
    # Remediation (reads Stripe, writes only the tenant database) converged every leak ...
    assert remediated.success
    assert remediated.output_for_node("remediate_subscription_state") == {
        "flagged_tenants": 3,
        "changed": 3,
        "unchanged": 0,
    }
    revoked = query(
        billing_db_url,
        "SELECT entity_id FROM audit_log WHERE action = 'tenant.revoke_access' ORDER BY entity_id",
    )
    assert [r["entity_id"] for r in revoked] == leaking
    # ... and sent no write to Stripe at all: nothing there to duplicate.
    assert requests["POST"] == 0 and requests["DELETE"] == 0
    assert stripe_sandbox.state.data.seq == objects_before
    after = dg.materialize(DIFF, resources=recon.resources(stripe_sandbox.url, billing_db_url))
    assert after.success and _snapshot(billing_db_url)["findings"] == []


def test_event_recovery_listing_with_30_percent_faults_returns_every_event_once() -> None:
    """The recovery job's Event.list paging: a failed page is asked for again, not skipped."""
    from datetime import UTC, datetime, timedelta

    from billing_pipelines.lib.stripe import reads as stripe_state

    sandbox = run_in_thread(port=0, seed=5)
    try:
        client = stripe_api.make_client(API_KEY, api_base=sandbox.url, max_network_retries=0)
        with unthrottled_client(sandbox.state) as setup:
            created = {
                str(setup.v1.customers.create({"email": f"r{i}@x.io"}).id) for i in range(250)
            }
        since = datetime.now(UTC) - timedelta(hours=1)
        clean = [e["id"] for e in stripe_state.events_since(client, since)]
        sandbox.state.faults = FaultRates(throttle=0.1, before=0.1, after=0.1)
        # Five listings of three pages each: some pages fail, every listing must still be whole.
        listings = [[e["id"] for e in stripe_state.events_since(client, since)] for _ in range(5)]
        app: Any = sandbox.server.config.app
        injected = sum(app.state.faults.values())
        sandbox.state.faults = FaultRates()
        assert len(clean) == len(set(clean)) >= len(created) == 250
        assert all(listing == clean for listing in listings)
        assert injected > 0
    finally:
        sandbox.stop()
