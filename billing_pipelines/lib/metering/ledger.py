"""The usage report ledger in the billing database: a row before each Stripe call, confirmed after.

Functions take a psycopg connection (dict rows) so callers choose the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import date
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.metering.planning import (
    DELIVERED,
    FAILED,
    OUT_OF_WINDOW,
    BillingAccount,
    Key,
    LedgerEntry,
    MeterReport,
)

if TYPE_CHECKING:
    import psycopg

Conn: TypeAlias = "psycopg.Connection[Any]"


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
    reports = list(reports)
    if not reports:
        return []
    columns = list(
        zip(
            *[
                (
                    r.tenant_id,
                    r.metric,
                    r.usage_date,
                    r.value,
                    r.value_version,
                    r.identifier,
                    r.stripe_customer_id,
                    r.event_name,
                    r.event_time,
                )
                for r in reports
            ],
            strict=True,
        )
    )
    tenants, metrics, days, values, versions, identifiers, customers, events, stamps = (
        list(c) for c in columns
    )
    conn.execute(
        """
        UPDATE usage_report_ledger l SET status = 'superseded', updated_at = now()
        FROM unnest(%s::text[], %s::text[], %s::date[], %s::int[]) AS n(t, m, d, v)
        WHERE l.tenant_id = n.t AND l.metric = n.m AND l.usage_date = n.d
          AND l.value_version < n.v AND l.status IN ('pending', 'failed')
        """,
        (tenants, metrics, days, versions),
    )
    rows = conn.execute(
        """
        INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value, value_version,
            identifier, stripe_customer_id, meter_event_name, status, event_timestamp, run_id)
        SELECT t, m, d, v, ver, i, c, e, 'pending', ts, %s
        FROM unnest(%s::text[], %s::text[], %s::date[], %s::bigint[], %s::int[], %s::text[],
                    %s::text[], %s::text[], %s::timestamptz[])
             AS n(t, m, d, v, ver, i, c, e, ts)
        RETURNING id, identifier
        """,
        (run_id, tenants, metrics, days, values, versions, identifiers, customers, events, stamps),
    ).fetchall()
    ids = {r["identifier"]: r["id"] for r in rows}
    return [replace(r, ledger_id=ids[r.identifier]) for r in reports]


def record_outcome(conn: Conn, ledger_id: int, status: str, error: str | None = None) -> None:
    """Confirm one row after its call: delivered, failed (retried next run) or out_of_window."""
    record_outcomes(conn, [(ledger_id, status, error)])


def record_outcomes(conn: Conn, outcomes: Iterable[tuple[int, str, str | None]]) -> None:
    """Confirm rows after their calls: (ledger id, delivered | failed | out_of_window, error)."""
    outcomes = list(outcomes)
    if not outcomes:
        return
    for _, status, _ in outcomes:
        if status not in (DELIVERED, FAILED, OUT_OF_WINDOW):
            raise ValueError(f"not an outcome status: {status}")
    ids, statuses, errors = (list(c) for c in zip(*outcomes, strict=True))
    conn.execute(
        """
        UPDATE usage_report_ledger l
        SET status = n.s, attempts = l.attempts + 1, last_error = n.e, updated_at = now(),
            delivered_at = CASE WHEN n.s = 'delivered' THEN now() ELSE l.delivered_at END
        FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS n(id, s, e)
        WHERE l.id = n.id
        """,
        (ids, statuses, errors),
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
