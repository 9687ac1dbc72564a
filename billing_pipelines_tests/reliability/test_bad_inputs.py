"""Bad inputs give clear errors and push nothing that should not be pushed.

Already proven in reliability/webhooks/test_receiver.py (not repeated here): malformed JSON,
non-events, bad/stale/future signatures and a 65 KiB body against a 64 KiB cap (also chunked)
are 4xx that store nothing. Here: the receiver's *default* cap from settings against 10 MB,
unknown event types from the sandbox through receiver and consumer, tenant ids with SQL
metacharacters at every entry point, NaN / negative / absurd stored usage at the meter push,
and onboarding onto a plan that does not exist. "Nothing pushed" is read from the Stripe
sandbox's own state: its object sequence (every created object takes a number), its tables and
its received meter events.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle
from billing_sandbox.stripe.resources.events import emit
from psycopg.rows import dict_row

from billing_pipelines.defs.lifecycle.jobs import onboard_tenant
from billing_pipelines.defs.metering.assets import stripe_catalog, stripe_meter_reports
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.stripe import catalog as catalog_sync
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.tenants.ids import InvalidTenantIdError
from billing_pipelines.lib.usage import warehouse as wh
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS
from billing_pipelines.lib.webhooks.signature import expected_signature
from billing_pipelines.settings import load_settings
from billing_pipelines.webhooks import ReceiverConfig
from billing_pipelines_tests.cli_process import run_billing
from billing_pipelines_tests.support import API_KEY
from billing_pipelines_tests.webhook_harness import (  # noqa: F401 - fixtures
    Harness,
    ReceiverServer,
    billing_db_url,
    harness,
    query,
    smtp_server,
)

MB = 1024 * 1024
BAD_TENANT_IDS = [
    "t'; DROP TABLE tenants;--",
    't"x',
    "t\\",
    "t\\'; DELETE FROM tenants WHERE '1'='1",
    "租户-ünïcode",
    "t\r\nIdempotency-Key: x",
    "x" * 10_000,
]
BILLING_TABLES = ("tenants", "audit_log", "daily_tenant_usage", "usage_report_ledger")


def _stripe_footprint(sandbox: SandboxHandle) -> dict[str, Any]:
    """Everything Stripe would hold after a write: the object sequence, object counts, meter
    events and idempotency keys seen."""
    state = sandbox.state
    with state.lock:
        return {
            "seq": state.data.seq,
            "objects": {kind: len(rows) for kind, rows in state.data.objects.items()},
            "meter_events": len(state.data.meter_events),
            "idempotency_keys": len(state.data.idempotency),
        }


def _tables_exist(url: str) -> dict[str, bool]:
    return {
        t: query(url, "SELECT to_regclass(%s) IS NOT NULL AS ok", (t,))[0]["ok"]
        for t in BILLING_TABLES
    }


def _tenant_rows(url: str) -> list[dict[str, Any]]:
    return query(url, "SELECT * FROM tenants ORDER BY tenant_id")


# ---- 1. webhooks: 10 MB at the default cap; unknown event types through the consumer ----------


@pytest.fixture
def default_receiver(
    billing_db_url: str,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[ReceiverServer, str, int]]:
    """The receiver with the body cap production gets when WEBHOOK_MAX_BODY_BYTES is unset."""
    monkeypatch.delenv("WEBHOOK_MAX_BODY_BYTES", raising=False)
    cap = load_settings().webhook_max_body_bytes
    secret = "whsec_bad_inputs_default_cap"
    server = ReceiverServer(
        ReceiverConfig(database_url=billing_db_url, secrets=[secret], max_body_bytes=cap)
    )
    try:
        yield server, secret, cap
    finally:
        server.stop()


def _signed(body: bytes, secret: str) -> dict[str, str]:
    t = int(time.time())
    return {"Stripe-Signature": f"t={t},v1={expected_signature(body, t, secret)}"}


def _event(event_id: str, padding: int = 0) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "customer.updated",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": {"id": "cus_1", "object": "customer", "note": "p" * padding}},
        }
    ).encode()


def test_ten_megabytes_are_refused_at_the_default_cap_even_when_signed_or_chunked(
    default_receiver: tuple[ReceiverServer, str, int],
    billing_db_url: str,  # noqa: F811
) -> None:
    server, secret, cap = default_receiver
    assert cap == 512 * 1024 == ReceiverConfig.max_body_bytes  # the documented default
    big = _event("evt_big", padding=10 * MB)
    declared = httpx.post(server.webhook_url, content=big, headers=_signed(big, secret), timeout=30)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is enforced while reading
        for offset in range(0, len(big), 64 * 1024):
            yield big[offset : offset + 64 * 1024]

    streamed = httpx.post(server.webhook_url, content=chunks(), headers=_signed(big, secret))
    # Just under the cap, a signed event is accepted: the limit is the cap, not something lower.
    fits = _event("evt_fits", padding=cap - 1024)
    assert len(fits) <= cap
    accepted = httpx.post(server.webhook_url, content=fits, headers=_signed(fits, secret))

    assert (declared.status_code, declared.json()) == (
        413,
        {"error": f"body larger than {cap} bytes"},
    )
    assert "chunked" not in declared.request.headers.get("transfer-encoding", "")
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert (streamed.status_code, streamed.json()) == (
        413,
        {"error": f"body larger than {cap} bytes"},
    )
    assert accepted.status_code == 200
    rows = query(billing_db_url, "SELECT event_id FROM webhook_events")
    assert rows == [{"event_id": "evt_fits"}]
    metrics = httpx.get(server.metrics_url).text
    assert 'billing_webhook_requests_rejected_total{reason="body_too_large"} 2.0' in metrics


def test_unknown_event_types_are_acknowledged_stored_and_ignored_without_effects(
    harness: Harness,  # noqa: F811
) -> None:
    h = harness
    customer, subscription, _ = h.tenant("acme", on_clock=False)
    h.settle()
    before = {
        "tenant": h.tenant_row("acme"),
        "audit": query(h.db_url, "SELECT count(*) AS n FROM audit_log")[0]["n"],
        "outbox": query(h.db_url, "SELECT count(*) AS n FROM notification_outbox")[0]["n"],
        "dunning": query(h.db_url, "SELECT count(*) AS n FROM dunning_actions")[0]["n"],
        "alerts": query(h.db_url, "SELECT count(*) AS n FROM alerts")[0]["n"],
        "emails": len(h.emails()),
    }
    stripe_before = _stripe_footprint(h.sandbox)
    unknown = ["customer.tax_id.created", "billing.alert.triggered", "v3.future.thing_happened"]
    state = h.sandbox.state
    with state.lock:  # Stripe sends event types we have no handler for (new products, new APIs)
        obj = state.table("customer")[customer.id]
        event_ids = [emit(state, event_type, obj)["id"] for event_type in unknown]
    h.settle()

    assert state.webhooks is not None
    deliveries = [d for d in state.webhooks.deliveries if d.event_id in event_ids]
    # One delivery each, answered 200: Stripe has nothing to retry.
    assert sorted((d.event_type, d.status, d.attempt) for d in deliveries) == sorted(
        (t, 200, 0) for t in unknown
    )
    rows = query(
        h.db_url,
        "SELECT event_type, status, outcome, attempts FROM webhook_events "
        "WHERE event_id = ANY(%s) ORDER BY event_type",
        (event_ids,),
    )
    assert rows == [
        {"event_type": t, "status": "ignored", "outcome": f"no handler for {t}", "attempts": 1}
        for t in sorted(unknown)
    ]
    assert all(ok for _, _, ok in h.runs)  # ignoring is a success, not a failed run
    after = {
        "tenant": h.tenant_row("acme"),
        "audit": query(h.db_url, "SELECT count(*) AS n FROM audit_log")[0]["n"],
        "outbox": query(h.db_url, "SELECT count(*) AS n FROM notification_outbox")[0]["n"],
        "dunning": query(h.db_url, "SELECT count(*) AS n FROM dunning_actions")[0]["n"],
        "alerts": query(h.db_url, "SELECT count(*) AS n FROM alerts")[0]["n"],
        "emails": len(h.emails()),
    }
    assert after == before
    stripe_after = _stripe_footprint(h.sandbox)
    # The three events are the only new Stripe objects: the consumer wrote nothing to Stripe.
    assert stripe_after["seq"] == stripe_before["seq"] + 3
    assert stripe_after["objects"] == {
        **stripe_before["objects"],
        "event": stripe_before["objects"]["event"] + 3,
    }
    assert stripe_after["idempotency_keys"] == stripe_before["idempotency_keys"]
    assert h.client.v1.subscriptions.retrieve(subscription.id).status == "active"


# ---- 2. tenant ids with SQL metacharacters ---------------------------------------------------


@pytest.fixture
def catalog(stripe_client: stripe.StripeClient) -> Catalog:
    loaded = load_catalog()
    catalog_sync.sync_catalog(stripe_client, loaded)
    return loaded


def _onboard(
    url: str, client: stripe.StripeClient, catalog: Catalog, tenant: str, **kw: Any
) -> lifecycle.LifecycleResult:
    with psycopg.connect(url, row_factory=dict_row) as conn, conn.transaction():
        request = lifecycle.OnboardRequest(
            tenant_id=tenant,
            name=kw.pop("name", "Acme"),
            email="ops@acme.test",
            plan=kw.pop("plan", "pro"),
            **kw,
        )
        return lifecycle.onboard(conn, client, catalog, request)


def _job_resources(url: str, sandbox: SandboxHandle) -> dict[str, Any]:
    return {
        "billing_db": BillingDatabase(url=url),
        "stripe": StripeResource(api_key=API_KEY, api_base=sandbox.url, max_network_retries=0),
        "warehouse": UsageWarehouse(url=os.environ["CLICKHOUSE_URL"]),
    }


def _job_error(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data is not None and failure.step_failure_data.error is not None
    error = failure.step_failure_data.error
    return (error.cause or error).message


def test_bad_tenant_ids_are_refused_before_any_write_by_lifecycle_and_the_onboard_job(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    catalog: Catalog,
) -> None:
    url = fresh_database_url
    good = _onboard(url, stripe_client, catalog, "good-1", payment_method="pm_card_visa")
    tenants_before = _tenant_rows(url)
    audit_before = query(url, "SELECT count(*) AS n FROM audit_log")[0]["n"]
    stripe_before = _stripe_footprint(stripe_sandbox)

    messages = {}
    for bad in BAD_TENANT_IDS:
        with pytest.raises(InvalidTenantIdError) as refused:
            _onboard(url, stripe_client, catalog, bad, payment_method="pm_card_visa")
        messages[bad] = str(refused.value)
    # The Dagster job behind the launchpad and the CLI: a failed run, the same message.
    result = onboard_tenant.execute_in_process(
        run_config={
            "ops": {
                "onboard_tenant_op": {
                    "config": {
                        "tenant_id": BAD_TENANT_IDS[0],
                        "name": "x",
                        "email": "x@y.test",
                        "plan": "pro",
                    }
                }
            }
        },
        resources=_job_resources(url, stripe_sandbox),
        raise_on_error=False,
    )

    assert messages[BAD_TENANT_IDS[0]] == (
        'tenant id "t\'; DROP TABLE tenants;--" is not allowed (characters not allowed: '
        "' ' \"'\" ';'; use letters, digits, '_', '.' and '-' (starting with a letter or digit))"
    )
    assert "characters not allowed: '\"'" in messages['t"x']
    assert "characters not allowed: '\\\\'" in messages["t\\"]
    assert "'租'" in messages["租户-ünïcode"] and "'ü'" in messages["租户-ünïcode"]
    assert "'\\r'" in messages["t\r\nIdempotency-Key: x"]
    assert "is 10000 characters long (at most 64)" in messages["x" * 10_000]
    assert not result.success
    assert 'DROP TABLE tenants;--" is not allowed' in _job_error(result)
    # Nothing of the refused ids anywhere; the good tenant untouched; every table still there.
    assert _tables_exist(url) == dict.fromkeys(BILLING_TABLES, True)
    assert _tenant_rows(url) == tenants_before
    assert [r["tenant_id"] for r in tenants_before] == ["good-1"]
    assert tenants_before[0]["stripe_subscription_id"] == good.subscription_id
    assert query(url, "SELECT count(*) AS n FROM audit_log")[0]["n"] == audit_before
    assert _stripe_footprint(stripe_sandbox) == stripe_before
    assert len(stripe_client.v1.customers.list({"limit": 100}).data) == 1


def test_billing_tenant_create_refuses_a_bad_id_in_one_line_before_starting_anything(
    embedded_services: dict[str, str],
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    tmp_path: Path,
) -> None:
    stripe_before = _stripe_footprint(stripe_sandbox)
    env = {
        **os.environ,
        **embedded_services,
        "DATABASE_URL": fresh_database_url,
        "STRIPE_API_BASE": stripe_sandbox.url,
        "STRIPE_API_KEY": API_KEY,
        "BILLING_HOME": str(tmp_path / "home"),
    }
    outputs = []
    for bad in (BAD_TENANT_IDS[0], "租户-ünïcode"):
        done = run_billing(
            ["tenant", "create", "--tenant", bad, "--plan", "pro", "--email", "ops@acme.test"],
            env,
        )
        outputs.append((done.returncode, done.stdout, done.stderr.splitlines()))
    [(rc1, out1, err1), (rc2, out2, err2)] = outputs
    assert (rc1, out1, rc2, out2) == (2, "", 2, "")
    assert err1 == [
        'error: tenant id "t\'; DROP TABLE tenants;--" is not allowed (characters not allowed: '
        "' ' \"'\" ';'; use letters, digits, '_', '.' and '-' (starting with a letter or digit))"
    ]
    assert len(err2) == 1 and err2[0].startswith("error: tenant id '租户-ünïcode' is not allowed")
    assert not (tmp_path / "home").exists()  # no embedded service was started for it
    assert _tenant_rows(fresh_database_url) == []
    assert _stripe_footprint(stripe_sandbox) == stripe_before


WAREHOUSE_DAY = date(2026, 1, 7)


def test_metacharacter_tenant_ids_in_the_warehouse_are_values_not_sql(
    embedded_services: dict[str, str], fresh_database_url: str
) -> None:
    """The SaaS writes usage_events, so odd ids can reach the usage query: they come back
    byte for byte as values and are held as unknown tenants (stored as values, not billed, a
    WARN check names them) while the known tenant is stored and billed."""
    ch = wh.connect(embedded_services["CLICKHOUSE_URL"])
    wh.ensure_usage_schema(ch)
    ts = datetime.combine(WAREHOUSE_DAY, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    tenants = ["wh-good", *BAD_TENANT_IDS]
    rows = [
        [uuid.uuid4(), f"q-{i}-{n}", tenant, ts, "query", 10, 1, 5, ts]
        for i, tenant in enumerate(tenants)
        for n in range(3)
    ]
    ch.insert("usage_events", rows, column_names=list(USAGE_EVENTS_COLUMNS))
    query(
        fresh_database_url,
        "INSERT INTO tenants (tenant_id, name, email, plan) "
        "VALUES ('wh-good', 'G', 'g@x.io', 'pro')",
    )
    usage = wh.daily_usage(ch, WAREHOUSE_DAY)
    resources = {
        "warehouse": UsageWarehouse(url=embedded_services["CLICKHOUSE_URL"]),
        "billing_db": BillingDatabase(url=fresh_database_url),
    }
    result = dg.materialize(
        [daily_tenant_usage],
        partition_key=WAREHOUSE_DAY.isoformat(),
        resources=resources,
        raise_on_error=False,
    )

    assert sorted(usage["tenant_id"]) == sorted(tenants)  # exact round trip, nothing mangled
    assert set(usage["billable_queries"]) == {3}
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["usage_matches_schema"].passed
    held = checks["usage_tenants_known"]
    assert not held.passed and held.severity == dg.AssetCheckSeverity.WARN
    assert held.metadata["held_tenants"].value == len(BAD_TENANT_IDS)
    assert "DROP TABLE tenants;--" in (held.description or "")
    stored = query(fresh_database_url, "SELECT tenant_id FROM daily_tenant_usage")
    assert sorted(r["tenant_id"] for r in stored) == sorted(tenants)  # values, byte for byte
    assert _tables_exist(fresh_database_url) == dict.fromkeys(BILLING_TABLES, True)
    assert _tenant_rows(fresh_database_url)[0]["tenant_id"] == "wh-good"
    count = ch.query(
        "SELECT count() FROM usage_events WHERE toDate(timestamp) = {d:Date}",
        parameters={"d": WAREHOUSE_DAY},
    ).result_rows[0][0]
    assert count == 3 * len(tenants)  # usage_events intact


# ---- 3. NaN / negative / absurd stored usage at the meter push --------------------------------

PUSH_DAY = datetime.now(UTC).date() - timedelta(days=3)  # inside Stripe's 35-day window


def _store_usage(url: str, values: dict[str, int]) -> None:
    with psycopg.connect(url) as conn:
        for tenant, queries in values.items():
            conn.execute(
                """
                INSERT INTO daily_tenant_usage (usage_date, tenant_id, billable_queries, tokens,
                    embeddings, raw_events, duplicate_events)
                VALUES (%s, %s, %s, 0, 0, 0, 0)
                ON CONFLICT (usage_date, tenant_id)
                DO UPDATE SET billable_queries = EXCLUDED.billable_queries
                """,
                (PUSH_DAY, tenant, queries),
            )


def _push(url: str, sandbox: SandboxHandle, **config: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [stripe_meter_reports],
        partition_key=PUSH_DAY.isoformat(),
        resources=_job_resources(url, sandbox),
        run_config={"ops": {"stripe_meter_reports": {"config": config}}},
        raise_on_error=False,
    )


def _sent_values(sandbox: SandboxHandle) -> list[tuple[str, int]]:
    """Every meter event Stripe received, as (customer, value), in arrival order."""
    with sandbox.state.lock:
        events = list(sandbox.state.data.meter_events)
    return [(e["payload"]["stripe_customer_id"], int(e["payload"]["value"])) for e in events]


def test_nan_negative_and_absurd_usage_are_refused_and_good_tenants_still_pushed(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = fresh_database_url
    monkeypatch.delenv("METER_DAILY_VALUE_CEILING", raising=False)
    resources = _job_resources(url, stripe_sandbox)
    assert dg.materialize([stripe_catalog], resources=resources).success
    catalog = load_catalog()
    customers = {
        t: str(
            _onboard(
                url, stripe_client, catalog, t, payment_method="pm_card_visa", trial=False
            ).customer_id
        )
        for t in ("good-a", "good-b", "later-absurd", "negative")
    }
    _store_usage(url, {"good-a": 100, "good-b": 250, "later-absurd": 40})
    first = _push(url, stripe_sandbox)
    assert first.success
    assert sorted(_sent_values(stripe_sandbox)) == sorted(
        [(customers["good-a"], 100), (customers["good-b"], 250), (customers["later-absurd"], 40)]
    )

    # The stored table itself refuses NaN and negatives (bigint, CHECK >= 0) ...
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        query(
            url, "UPDATE daily_tenant_usage SET billable_queries = 'NaN' WHERE tenant_id = 'good-a'"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        _store_usage(url, {"negative": -5})
    # ... so to reach the push, a negative needs the constraint gone (a restore without
    # constraints, a hand-made fix): the push must still refuse it. Absurd values fit a bigint.
    query(
        url,
        "ALTER TABLE daily_tenant_usage DROP CONSTRAINT daily_tenant_usage_billable_queries_check",
    )
    _store_usage(url, {"good-a": 120, "later-absurd": 2**40, "negative": -5})
    second = _push(url, stripe_sandbox)

    assert not second.success
    message = _job_error(second)
    assert (
        f"2 stored usage value(s) for {PUSH_DAY} refused: nothing was sent for 2 tenant(s), "
        "the others were pushed" in message
    )
    assert (
        f"tenant 'later-absurd' on {PUSH_DAY}: billable_queries = 1099511627776 "
        "(above the sanity ceiling of 1,000,000,000 (METER_DAILY_VALUE_CEILING))" in message
    )
    assert f"tenant 'negative' on {PUSH_DAY}: billable_queries = -5 (negative)" in message
    # Only good-a's new total went out; no event carries a refused value.
    sent = _sent_values(stripe_sandbox)
    assert sent[3:] == [(customers["good-a"], 120)]
    assert all(0 <= value <= 250 for _, value in sent)
    ledger = query(
        url,
        "SELECT tenant_id, value, value_version, status FROM usage_report_ledger "
        "ORDER BY tenant_id, value_version",
    )
    assert [(r["tenant_id"], r["value"], r["value_version"], r["status"]) for r in ledger] == [
        ("good-a", 100, 1, "delivered"),
        ("good-a", 120, 2, "delivered"),
        ("good-b", 250, 1, "delivered"),
        ("later-absurd", 40, 1, "delivered"),  # held as Stripe has it: not zeroed, not absurd
    ]
    meter_id = stripe_meters.active_meter_ids(stripe_client)["rag_api_queries"]
    totals = {
        t: int(stripe_meters.day_total(stripe_client, meter_id, c, PUSH_DAY))
        for t, c in customers.items()
    }
    assert totals == {"good-a": 120, "good-b": 250, "later-absurd": 40, "negative": 0}

    # Fixed data and a re-run: only what changed is sent, and the run succeeds.
    _store_usage(url, {"later-absurd": 45, "negative": 7})
    third = _push(url, stripe_sandbox)
    assert third.success
    assert sorted(_sent_values(stripe_sandbox)[4:]) == sorted(
        [(customers["later-absurd"], 45), (customers["negative"], 7)]
    )

    # The ceiling is a setting: lowered below good-b's total, good-b's change is refused too.
    monkeypatch.setenv("METER_DAILY_VALUE_CEILING", "200")
    _store_usage(url, {"good-b": 260})
    fourth = _push(url, stripe_sandbox)
    assert not fourth.success
    assert (
        f"tenant 'good-b' on {PUSH_DAY}: billable_queries = 260 "
        "(above the sanity ceiling of 200 (METER_DAILY_VALUE_CEILING))" in _job_error(fourth)
    )
    assert len(_sent_values(stripe_sandbox)) == 6
    # ... and the launchpad's daily_value_ceiling wins over the environment for one run.
    fifth = _push(url, stripe_sandbox, daily_value_ceiling=1_000)
    assert fifth.success
    assert _sent_values(stripe_sandbox)[6:] == [(customers["good-b"], 260)]


# ---- 4. a plan that does not exist (catalog load errors: unit/test_catalog_validation.py) -----


def test_onboarding_onto_an_unknown_plan_creates_nothing(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    catalog: Catalog,
) -> None:
    stripe_before = _stripe_footprint(stripe_sandbox)
    with pytest.raises(BillingConfigError) as refused:
        _onboard(
            fresh_database_url,
            stripe_client,
            catalog,
            "new-1",
            plan="gold",
            payment_method="pm_card_visa",
        )
    result = onboard_tenant.execute_in_process(
        run_config={
            "ops": {
                "onboard_tenant_op": {
                    "config": {
                        "tenant_id": "new-2",
                        "name": "x",
                        "email": "x@y.test",
                        "plan": "platinum",
                    }
                }
            }
        },
        resources=_job_resources(fresh_database_url, stripe_sandbox),
        raise_on_error=False,
    )
    assert str(refused.value) == "unknown plan 'gold' (known plans: enterprise, pro, starter)"
    assert not result.success
    assert (
        _job_error(result)
        .strip()
        .endswith("unknown plan 'platinum' (known plans: enterprise, pro, starter)")
    )
    assert _tenant_rows(fresh_database_url) == []
    assert query(fresh_database_url, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 0
    assert _stripe_footprint(stripe_sandbox) == stripe_before
