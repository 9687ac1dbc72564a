"""Each resource against the real engine: embedded PostgreSQL and chDB through the HTTP bridge."""

from __future__ import annotations

import multiprocessing
import re
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, date, datetime

import dagster as dg
import pytest

from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib.errors import BillingConfigError, ServiceUnavailableError
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS

DAY = date(2026, 3, 14)


def _events(tenant: str, queries: int, duplicated: int, day: date = DAY) -> list[list[object]]:
    rows: list[list[object]] = []
    for i in range(queries):
        ts = datetime(day.year, day.month, day.day, 12, 0, i % 60, tzinfo=UTC)
        # Query ids are per day: an id seen on an earlier day counts there, not again.
        row = [uuid.uuid4(), f"{tenant}-{day:%m%d}-q{i}", tenant, ts, "query", 100, 1, 20, ts]
        rows.append(row)
        if i < duplicated:  # the cache double-logs: same query id, new event id
            rows.append([uuid.uuid4(), *row[1:]])
    return rows


COLUMNS = list(USAGE_EVENTS_COLUMNS)


@pytest.fixture
def usage_day(embedded_services: dict[str, str]) -> str:
    """A warehouse holding known usage for DAY, including duplicates and a tricky tenant id."""
    client = warehouse.connect(embedded_services["CLICKHOUSE_URL"])
    warehouse.ensure_usage_schema(client)
    warehouse.clear_usage_events(client)
    rows = _events("t-alpha", 120, 7) + _events("t'; DROP TABLE usage_events; --", 5, 2)
    rows += _events("t-alpha", 3, 0, day=date(2026, 3, 15))  # next day: not in DAY's partition
    client.insert("usage_events", rows, column_names=COLUMNS)
    return embedded_services["CLICKHOUSE_URL"]


def test_daily_usage_counts_distinct_queries(usage_day: str) -> None:
    usage = UsageWarehouse(url=usage_day).daily_usage(DAY)
    by_tenant = usage.set_index("tenant_id")
    assert by_tenant.loc["t-alpha", "billable_queries"] == 120
    assert by_tenant.loc["t-alpha", "raw_events"] == 127
    assert by_tenant.loc["t-alpha", "duplicate_events"] == 7
    assert by_tenant.loc["t-alpha", "tokens"] == 120 * 100  # tokens once per distinct query
    hostile = "t'; DROP TABLE usage_events; --"
    assert by_tenant.loc[hostile, "billable_queries"] == 5
    # The table survived the hostile tenant id: parameters are bound, never interpolated.
    assert (
        UsageWarehouse(url=usage_day).daily_usage(date(2026, 3, 15))["billable_queries"].sum() == 3
    )


def _count_in_child(url: str) -> int:
    return int(UsageWarehouse(url=url).daily_usage(DAY)["billable_queries"].sum())


def test_two_processes_query_the_warehouse_at_once(usage_day: str) -> None:
    # chDB lets one process open the data folder; the bridge lets many processes share it.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_count_in_child, [usage_day] * 6))
    assert results == [125] * 6


def test_unreachable_warehouse_names_the_setting() -> None:
    with pytest.raises(ServiceUnavailableError, match=r"^CLICKHOUSE_URL: cannot reach"):
        warehouse.connect("http://default:s3cret@127.0.0.1:1/default", connect_timeout=2)


def test_billing_database_resource_stores_usage_idempotently(
    embedded_services: dict[str, str], usage_day: str
) -> None:
    usage = UsageWarehouse(url=usage_day).daily_usage(DAY)
    with dg.build_resources(
        {"billing_db": BillingDatabase(url=embedded_services["DATABASE_URL"])}
    ) as resources:
        db: BillingDatabase = resources.billing_db
        assert db.replace_daily_usage(DAY, usage) == 2
        assert db.replace_daily_usage(DAY, usage) == 2
        with db.transaction() as conn:
            rows = conn.execute(
                "SELECT tenant_id, billable_queries FROM daily_tenant_usage "
                "WHERE usage_date = %s ORDER BY tenant_id",
                (DAY,),
            ).fetchall()
    assert [(r["tenant_id"], r["billable_queries"]) for r in rows] == [
        ("t'; DROP TABLE usage_events; --", 5),
        ("t-alpha", 120),
    ]


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("mysql://u:hunter2@h/db", BillingConfigError, r"^DATABASE_URL is invalid"),
        (
            "postgresql://u:hunter2@127.0.0.1:1/db",
            ServiceUnavailableError,
            r"^DATABASE_URL: cannot connect to postgresql://u:\*\*\*@127\.0\.0\.1:1/db "
            r"\(connection refused",
        ),
    ],
)
def test_billing_database_rejects_bad_and_unreachable_urls(
    url: str, error: type[Exception], message: str
) -> None:
    # Dagster wraps resource start-up errors; the operator sees our one line as the cause.
    with pytest.raises(dg.DagsterResourceFunctionError) as info:
        with dg.build_resources({"db": BillingDatabase(url=url)}):
            pass
    cause = info.value.user_exception
    assert isinstance(cause, error)
    assert re.match(message, str(cause))
    assert "hunter2" not in str(cause)


def test_stripe_resource_builds_sdk_client_against_configured_base(
    embedded_services: dict[str, str],
) -> None:
    resource = StripeResource(api_key="sk_test_resource", api_base="http://127.0.0.1:9")
    client = resource.client()
    assert client._requestor.base_addresses["api"] == "http://127.0.0.1:9"
    with pytest.raises(BillingConfigError, match="STRIPE_API_KEY is not set"):
        StripeResource(api_key="").client()


def test_embedded_postgres_commits_billing_durably_and_dagster_events_asynchronously(
    embedded_services: dict[str, str],
) -> None:
    import psycopg

    def setting(url: str) -> str:
        with psycopg.connect(url) as conn:
            row = conn.execute("SHOW synchronous_commit").fetchone()
            assert row is not None
            return str(row[0])

    assert setting(embedded_services["DATABASE_URL"]) == "on"
    assert setting(embedded_services["DAGSTER_POSTGRES_URL"]) == "off"
