"""The billing schema applies cleanly to an empty database, twice, and concurrently."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import psycopg
import pytest
from alembic import command
from psycopg import sql
from psycopg.rows import dict_row

from billing_pipelines.lib.alerts import channels as alerting
from billing_pipelines.lib.pg import database, migrations

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
    # 0006: recovery
    "dunning_dispatches",
    # 0007: lifecycle instants that cut a tenant's usage
    "lifecycle_usage_cuts",
    # 0008: late usage corrections
    "late_usage_corrections",
    # 0009: how each day's invoice and subscription snapshot was taken
    "stripe_snapshot_passes",
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


@pytest.mark.parametrize(
    "email",
    ["a@x.com, b@y.com", "a@x.com\r\nBcc: c@z.com", "Name <a@x.com>", "a@x.com;b@y.com", "nobody"],
)
def test_schema_refuses_an_email_that_is_not_one_address(empty_database: str, email: str) -> None:
    migrations.upgrade_to_head(empty_database)
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "INSERT INTO tenants (tenant_id, name, email, plan) VALUES ('t1', 'T', 'a@x.io', 'pro')"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE tenants SET email = %s WHERE tenant_id = 't1'", (email,))


def test_chat_deliveries_survive_the_move_to_the_leased_queue(empty_database: str) -> None:
    command.upgrade(migrations.alembic_config(empty_database), "0004")
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            """
            INSERT INTO alerts (id, dedup_key, kind, severity, summary, details) VALUES
                (1, 'run_failed:a', 'run_failed', 'critical', 'Run of a failed', '{}'),
                (2, 'run_failed:b', 'run_failed', 'critical', 'Run of b failed',
                 '{"reason": "boom"}'),
                (3, 'run_failed:c', 'run_failed', 'critical', 'Run of c failed', '{}');
            INSERT INTO alert_deliveries (alert_id, channel, status, attempts, last_error,
                                          created_at, sent_at) VALUES
                (1, 'chat', 'sent', 1, NULL, now() - interval '3 hours', now()),
                (2, 'chat', 'pending', 3, 'ConnectError', now() - interval '2 hours', NULL),
                (3, 'chat', 'dead', 8, 'HTTPStatusError (HTTP 503)', now() - interval '1 hour',
                 NULL);
            """
        )
    assert migrations.upgrade_to_head(empty_database)[0] == "0005"
    with psycopg.connect(empty_database, row_factory=dict_row) as conn:
        rows = {r["alert_id"]: r for r in conn.execute("SELECT * FROM alert_deliveries")}
    # Numbered in queueing order; sent and dead rows are as they were.
    assert [rows[a]["id"] for a in (1, 2, 3)] == [1, 2, 3]
    assert rows[1]["status"] == "sent" and rows[1]["sent_at"] is not None
    assert rows[3]["status"] == "dead" and rows[3]["attempts"] == 8
    assert rows[2]["status"] == "pending" and rows[2]["attempts"] == 3
    assert rows[2]["last_error"] == "ConnectError"

    # The pending delivery is due and goes out through the queue, once; a new one gets a new id.
    posted: list[dict[str, object]] = []
    pool = database.open_pool(empty_database)
    try:
        counts = alerting.deliver_chat(
            lambda: database.transaction(pool),
            "http://chat.invalid/hook",
            post=lambda _url, body: posted.append(body),
        )
        with database.transaction(pool) as conn:
            conn.execute(
                "INSERT INTO alerts (id, dedup_key, kind, severity, summary) "
                "VALUES (4, 'run_failed:d', 'run_failed', 'critical', 'Run of d failed')"
            )
            conn.execute("INSERT INTO alert_deliveries (alert_id, channel) VALUES (4, 'chat')")
    finally:
        pool.close()
    assert counts == {"sent": 1, "failed": 0, "dead": 0}
    assert len(posted) == 1 and "Run of b failed" in str(posted[0]["text"])
    with psycopg.connect(empty_database) as conn:
        new = conn.execute("SELECT id FROM alert_deliveries WHERE alert_id = 4").fetchone()
    assert new == (4,)

    # And back: the schema of 0004, with every row kept.
    command.downgrade(migrations.alembic_config(empty_database), "0004")
    with psycopg.connect(empty_database) as conn:
        statuses = conn.execute(
            "SELECT alert_id, status FROM alert_deliveries ORDER BY alert_id"
        ).fetchall()
    assert statuses == [(1, "sent"), (2, "sent"), (3, "dead"), (4, "pending")]
