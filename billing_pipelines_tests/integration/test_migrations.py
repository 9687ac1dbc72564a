"""The billing schema applies cleanly to an empty database, twice, and concurrently."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import psycopg
import pytest
from psycopg import sql

from billing_pipelines.lib.pg import migrations

EXPECTED_TABLES = {
    "tenants",
    "webhook_events",
    "daily_tenant_usage",
    "usage_report_ledger",
    "dunning_actions",
    "notification_outbox",
    "audit_log",
    "billing_schema_version",
    # 0003: webhooks and dunning
    "dunning_cases",
    "alerts",
    # 0004: reconciliation
    "stripe_customer_snapshots",
    "stripe_subscription_snapshots",
    "stripe_invoice_snapshots",
    "stripe_invoice_line_snapshots",
    "subscription_state_findings",
    "usage_invoice_audit",
    "billing_health_daily",
    "alert_deliveries",
}


@pytest.fixture
def empty_database(embedded_services: dict[str, str]) -> Iterator[str]:
    """A brand-new database on the embedded server, dropped afterwards."""
    admin = embedded_services["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def test_migrations_apply_twice_cleanly(empty_database: str) -> None:
    assert migrations.current_revision(empty_database) is None
    first = migrations.upgrade_to_head(empty_database)
    # Every shipped revision, in order, ending at head (other migrations may follow 0002).
    assert first[:2] == ["0001", "0002"]
    assert first[-1] == migrations.head_revision()
    assert _tables(empty_database) == EXPECTED_TABLES
    second = migrations.upgrade_to_head(empty_database)
    assert second == []
    assert migrations.current_revision(empty_database) == migrations.head_revision()


def test_concurrent_start_ups_migrate_once(empty_database: str) -> None:
    # Separate processes, as real start-ups are (Alembic itself is not thread-safe).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
        results = list(pool.map(migrations.upgrade_to_head, [empty_database] * 3))
    assert sorted(bool(r) for r in results) == [False, False, True]
    assert _tables(empty_database) == EXPECTED_TABLES


def test_schema_guards_tenant_access_flags(empty_database: str) -> None:
    migrations.upgrade_to_head(empty_database)
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "INSERT INTO tenants (tenant_id, name, email, plan) VALUES ('t1', 'T', 't@x', 'pro')"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE tenants SET rate_limit_multiplier = 2 WHERE tenant_id = 't1'")
