"""Operator alerts: one row per dedup key, plus an email to the on-call address if configured."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.notifications import emails as notifications

if TYPE_CHECKING:
    import psycopg


def raise_alert(
    conn: psycopg.Connection[Any],
    *,
    dedup_key: str,
    kind: str,
    severity: str,
    summary: str,
    details: Mapping[str, Any],
    notify: str | None,
) -> bool:
    """Record the alert once (False if already raised) and queue an email to `notify`."""
    row = conn.execute(
        """
        INSERT INTO alerts (dedup_key, kind, severity, summary, details)
        VALUES (%s, %s, %s, %s, %s::jsonb)
        ON CONFLICT (dedup_key) DO NOTHING
        RETURNING id
        """,
        (dedup_key, kind, severity, summary, json.dumps(dict(details), default=str)),
    ).fetchone()
    if row is None:
        return False
    if notify:
        notifications.enqueue(
            conn,
            dedup_key=f"alert:{dedup_key}",
            tenant_id=None,
            template="ops_alert",
            recipient=notify,
            context={
                "summary": summary,
                "kind": kind,
                "severity": severity,
                "details": dict(details),
            },
        )
    return True
