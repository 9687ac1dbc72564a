"""daily_tenant_usage materialized through Dagster against the real engines."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from billing_pipelines.defs.resources import BillingDatabase, UsageWarehouse
from billing_pipelines.defs.usage.assets import daily_tenant_usage
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.usage.held import days_to_release
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS

DAY = date(2026, 4, 2)


def _insert(url: str, tenant: str, queries: range, copies: int = 1) -> None:
    client = warehouse.connect(url)
    ts = datetime(2026, 4, 2, 9, 30, tzinfo=UTC)
    rows = [
        [uuid.uuid4(), f"{tenant}-{i}", tenant, ts, "query", 10, 0, 5, ts]
        for i in queries
        for _ in range(copies)
    ]
    client.insert("usage_events", rows, column_names=list(USAGE_EVENTS_COLUMNS))


def _register_tenants(database_url: str, *tenant_ids: str) -> None:
    import psycopg

    with psycopg.connect(database_url) as conn:
        for tenant in tenant_ids:
            conn.execute(
                "INSERT INTO tenants (tenant_id, name, email, plan) VALUES (%s, %s, %s, 'pro') "
                "ON CONFLICT (tenant_id) DO NOTHING",
                (tenant, tenant, f"{tenant}@example.com"),
            )


@pytest.fixture
def resources(embedded_services: dict[str, str]) -> dict[str, object]:
    client = warehouse.connect(embedded_services["CLICKHOUSE_URL"])
    warehouse.ensure_usage_schema(client)
    warehouse.clear_usage_events(client)
    _register_tenants(embedded_services["DATABASE_URL"], "t-a", "t-b")
    return {
        "warehouse": UsageWarehouse(url=embedded_services["CLICKHOUSE_URL"]),
        "billing_db": BillingDatabase(url=embedded_services["DATABASE_URL"]),
    }


def _materialize(resources: dict[str, object]) -> dict[str, object]:
    result = dg.materialize(
        [daily_tenant_usage], partition_key=DAY.isoformat(), resources=resources
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("daily_tenant_usage")
    return {k: v.value for k, v in materialization.metadata.items()}


def _stored(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tenant_id, billable_queries FROM daily_tenant_usage WHERE usage_date = %s",
            (DAY,),
        ).fetchall()
    return dict(rows)


def test_rerun_is_idempotent_and_late_events_converge(
    resources: dict[str, object], embedded_services: dict[str, str]
) -> None:
    url = embedded_services["CLICKHOUSE_URL"]
    _insert(url, "t-a", range(40), copies=2)  # every query double-logged by the cache
    _insert(url, "t-b", range(10))
    first = _materialize(resources)
    assert first["billable_queries"] == 50
    assert first["duplicate_events_removed"] == 40
    assert _stored(embedded_services["DATABASE_URL"]) == {"t-a": 40, "t-b": 10}

    again = _materialize(resources)
    assert again["billable_queries"] == 50
    assert _stored(embedded_services["DATABASE_URL"]) == {"t-a": 40, "t-b": 10}

    _insert(url, "t-b", range(10, 15))  # late events for the same day arrive
    late = _materialize(resources)
    assert late["billable_queries"] == 55
    assert _stored(embedded_services["DATABASE_URL"]) == {"t-a": 40, "t-b": 15}


def test_unknown_tenant_is_held_with_a_warning_and_one_alert_and_released_once_billable(
    resources: dict[str, object], embedded_services: dict[str, str]
) -> None:
    import psycopg
    from psycopg.rows import dict_row

    url = embedded_services["CLICKHOUSE_URL"]
    db = embedded_services["DATABASE_URL"]
    with psycopg.connect(db) as conn:
        conn.execute("DELETE FROM alerts WHERE kind = 'usage_held'")
        conn.execute("DELETE FROM usage_report_ledger WHERE usage_date = %s", (DAY,))
    _insert(url, "t-a", range(5))
    _insert(url, "t-stranger", range(4))  # usage for a tenant the billing DB does not know
    for _ in range(2):  # a re-run of the day raises no second alert
        result = dg.materialize(
            [daily_tenant_usage], partition_key=DAY.isoformat(), resources=resources
        )
        assert result.success  # every known tenant is stored (and so pushed)
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks["usage_matches_schema"].passed
        held = checks["usage_tenants_known"]
        assert not held.passed and held.severity == dg.AssetCheckSeverity.WARN
        assert held.metadata["held_tenants"].value == 1
        assert held.metadata["held_queries"].value == 4
        assert "'t-stranger'" in (held.description or "")
    assert _stored(db) == {"t-a": 5, "t-stranger": 4}
    with psycopg.connect(db, row_factory=dict_row) as conn:
        alerts = conn.execute(
            "SELECT summary, details FROM alerts WHERE kind = 'usage_held'"
        ).fetchall()
        assert len(alerts) == 1
        assert alerts[0]["details"]["tenants"] == ["t-stranger"]
        assert "t-stranger" in alerts[0]["details"]["reason"]
        # Not billable yet: nothing to release. Once it has a customer and a subscription,
        # its day is due for a push (inside Stripe's window, counted from "today").
        assert days_to_release(conn, DAY + timedelta(days=1)) == {}
        conn.execute(
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
            "stripe_subscription_id) VALUES ('t-stranger', 'S', 's@x.io', 'pro', 'cus_s', 'sub_s')"
        )
        assert days_to_release(conn, DAY + timedelta(days=1)) == {DAY: ["t-stranger"]}
        assert days_to_release(conn, DAY + timedelta(days=40)) == {}  # beyond Stripe's window
        conn.execute("DELETE FROM tenants WHERE tenant_id = 't-stranger'")


def test_a_query_id_logged_on_both_sides_of_midnight_counts_once_on_its_first_day(
    resources: dict[str, object], embedded_services: dict[str, str]
) -> None:
    client = warehouse.connect(embedded_services["CLICKHOUSE_URL"])
    before = datetime(2026, 4, 1, 23, 59, 50, tzinfo=UTC)  # the day before DAY
    after = datetime(2026, 4, 2, 0, 0, 10, tzinfo=UTC)  # 20 seconds later, on DAY

    def row(query_id: str, at: datetime, tokens: int) -> list[object]:
        return [uuid.uuid4(), query_id, "t-a", at, "query", tokens, 0, 5, at]

    # 3 queries first logged before midnight and again after it (a cache re-log), 2 queries
    # only after it, and one logged twice after it.
    rows = [row(f"straddle-{i}", before, 7) for i in range(3)]
    rows += [row(f"straddle-{i}", after, 7) for i in range(3)]
    rows += [row(f"fresh-{i}", after, 11) for i in range(2)]
    rows += [row("twice", after, 5), row("twice", after, 5)]
    client.insert("usage_events", rows, column_names=list(USAGE_EVENTS_COLUMNS))

    first_day = dg.materialize(
        [daily_tenant_usage], partition_key="2026-04-01", resources=resources
    )
    assert first_day.success
    meta = _materialize(resources)  # DAY
    # DAY bills fresh-0, fresh-1 and twice: 3 queries, 2 * 11 + 5 = 27 tokens; its 10 rows
    # hold 3 re-logged straddlers and one cache copy as duplicates.
    assert meta["billable_queries"] == 3
    assert meta["duplicate_events_removed"] == 4
    assert _stored(embedded_services["DATABASE_URL"]) == {"t-a": 3}

    import psycopg

    with psycopg.connect(embedded_services["DATABASE_URL"]) as conn:
        got = conn.execute(
            "SELECT usage_date, billable_queries, tokens FROM daily_tenant_usage "
            "WHERE tenant_id = 't-a' ORDER BY usage_date"
        ).fetchall()
    assert got == [(date(2026, 4, 1), 3, 21), (DAY, 3, 27)]


def test_held_usage_sensor_pushes_a_day_again_once_its_tenant_is_billable(
    embedded_services: dict[str, str],
) -> None:
    import psycopg

    from billing_pipelines.definitions import defs

    db = embedded_services["DATABASE_URL"]
    recent = datetime.now(UTC).date() - timedelta(days=5)
    sensor = defs().resolve_sensor_def("held_usage_sensor")

    def evaluate() -> list[dg.RunRequest]:
        with dg.build_sensor_context(resources={"billing_db": BillingDatabase(url=db)}) as context:
            result = sensor(context)
        return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []

    with psycopg.connect(db) as conn:
        conn.execute("DELETE FROM daily_tenant_usage WHERE tenant_id = 't-late'")
        conn.execute("DELETE FROM tenants WHERE tenant_id = 't-late'")
        conn.execute(
            "INSERT INTO daily_tenant_usage (usage_date, tenant_id, billable_queries, tokens, "
            "embeddings, raw_events, duplicate_events) VALUES (%s, 't-late', 12, 0, 0, 12, 0)",
            (recent,),
        )
    try:
        assert evaluate() == []  # held: the tenant does not exist yet
        with psycopg.connect(db) as conn:
            conn.execute(
                "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
                "stripe_subscription_id) VALUES ('t-late', 'L', 'l@x.io', 'pro', 'cus_l', "
                "'sub_l')"
            )
        (request,) = evaluate()
        assert request.partition_key == recent.isoformat()
        assert request.run_key is not None and request.run_key.startswith(f"held-{recent}-")
        assert evaluate()[0].run_key == request.run_key  # the same run_key: launched once
    finally:
        with psycopg.connect(db) as conn:
            conn.execute("DELETE FROM daily_tenant_usage WHERE tenant_id = 't-late'")
            conn.execute("DELETE FROM tenants WHERE tenant_id = 't-late'")
