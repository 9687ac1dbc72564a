"""The usage report ledger in the billing database: a row before each Stripe call, confirmed after.

Functions take a psycopg connection (dict rows) so callers choose the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date
from typing import Any

import psycopg

from billing_pipelines.lib.meter_reports import (
    DELIVERED,
    BillingAccount,
    FAILED,
    OUT_OF_WINDOW,
    Key,
    LedgerEntry,
    MeterReport,
)

Conn = psycopg.Connection[Any]


def lock_day(conn: Conn, day: date) -> None:
    """Serialise reporters of the same day (released at the end of the transaction)."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('usage_report_ledger'), %s)", (day.toordinal(),)
    )


def latest_entries(conn: Conn, day: date) -> dict[Key, LedgerEntry]:
    """The newest version per (tenant, metric) reported for a day."""
    rows = conn.execute(
        """
        SELECT DISTINCT ON (tenant_id, metric)
               id, tenant_id, metric, value, value_version, identifier,
               stripe_customer_id, meter_event_name, status
        FROM usage_report_ledger
        WHERE usage_date = %s
        ORDER BY tenant_id, metric, value_version DESC
        """,
        (day,),
    ).fetchall()
    return {
        (r["tenant_id"], r["metric"]): LedgerEntry(
            id=r["id"],
            tenant_id=r["tenant_id"],
            metric=r["metric"],
            value=r["value"],
            value_version=r["value_version"],
            identifier=r["identifier"],
            stripe_customer_id=r["stripe_customer_id"],
            event_name=r["meter_event_name"],
            status=r["status"],
        )
        for r in rows
    }


def record_pending(conn: Conn, reports: Iterable[MeterReport], run_id: str) -> list[MeterReport]:
    """Write a pending row per new version (before any call) and supersede older open rows."""
    out = []
    for report in reports:
        conn.execute(
            """
            UPDATE usage_report_ledger SET status = 'superseded', updated_at = now()
            WHERE tenant_id = %s AND metric = %s AND usage_date = %s
              AND value_version < %s AND status IN ('pending', 'failed')
            """,
            (report.tenant_id, report.metric, report.usage_date, report.value_version),
        )
        row = conn.execute(
            """
            INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value,
                value_version, identifier, stripe_customer_id, meter_event_name, status,
                event_timestamp, run_id)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s, %s)
            RETURNING id
            """,
            (
                report.tenant_id,
                report.metric,
                report.usage_date,
                report.value,
                report.value_version,
                report.identifier,
                report.stripe_customer_id,
                report.event_name,
                report.event_time,
                run_id,
            ),
        ).fetchone()
        assert row is not None
        out.append(replace(report, ledger_id=row["id"]))
    return out


def record_outcome(conn: Conn, ledger_id: int, status: str, error: str | None = None) -> None:
    """Confirm a row after its call: delivered, failed (retried next run) or out_of_window."""
    if status not in (DELIVERED, FAILED, OUT_OF_WINDOW):
        raise ValueError(f"not an outcome status: {status}")
    conn.execute(
        """
        UPDATE usage_report_ledger
        SET status = %s, attempts = attempts + 1, last_error = %s, updated_at = now(),
            delivered_at = CASE WHEN %s = 'delivered' THEN now() ELSE delivered_at END
        WHERE id = %s
        """,
        (status, error, status, ledger_id),
    )


def delivered_before(conn: Conn, day: date, key: Key) -> int:
    """The last value Stripe confirmed for a (tenant, metric, day), 0 if none."""
    row = conn.execute(
        """
        SELECT value FROM usage_report_ledger
        WHERE usage_date = %s AND tenant_id = %s AND metric = %s AND status = 'delivered'
        ORDER BY value_version DESC LIMIT 1
        """,
        (day, *key),
    ).fetchone()
    return int(row["value"]) if row else 0


def last_delivery(conn: Conn) -> tuple[date, Any] | None:
    """The newest usage day with a delivered report, and when it was delivered."""
    row = conn.execute(
        """
        SELECT usage_date, max(delivered_at) AS at FROM usage_report_ledger
        WHERE status = 'delivered' GROUP BY usage_date ORDER BY usage_date DESC LIMIT 1
        """
    ).fetchone()
    return (row["usage_date"], row["at"]) if row else None


def billing_accounts(conn: Conn) -> dict[str, BillingAccount]:
    """Every tenant's Stripe customer and subscription (either may be missing)."""
    rows = conn.execute(
        "SELECT tenant_id, stripe_customer_id, stripe_subscription_id FROM tenants"
    ).fetchall()
    return {
        r["tenant_id"]: BillingAccount(r["stripe_customer_id"], r["stripe_subscription_id"])
        for r in rows
    }


def stored_usage(conn: Conn, day: date) -> dict[str, dict[str, int]]:
    """The validated daily_tenant_usage partition: tenant -> usage column -> value."""
    rows = conn.execute(
        """
        SELECT tenant_id, billable_queries, tokens, embeddings
        FROM daily_tenant_usage WHERE usage_date = %s
        """,
        (day,),
    ).fetchall()
    return {r["tenant_id"]: {k: int(v) for k, v in r.items() if k != "tenant_id"} for r in rows}


def out_of_window(conn: Conn, day: date) -> list[dict[str, Any]]:
    """Newest versions Stripe refused as too old: tenant, metric, truth and what it bills."""
    return conn.execute(
        """
        WITH latest AS (
            SELECT DISTINCT ON (tenant_id, metric) tenant_id, metric, value, status
            FROM usage_report_ledger WHERE usage_date = %s
            ORDER BY tenant_id, metric, value_version DESC
        )
        SELECT l.tenant_id, l.metric, l.value AS truth,
               coalesce((SELECT d.value FROM usage_report_ledger d
                         WHERE d.usage_date = %s AND d.tenant_id = l.tenant_id
                           AND d.metric = l.metric AND d.status = 'delivered'
                         ORDER BY d.value_version DESC LIMIT 1), 0) AS billed
        FROM latest l WHERE l.status = 'out_of_window'
        ORDER BY l.tenant_id, l.metric
        """,
        (day, day),
    ).fetchall()
