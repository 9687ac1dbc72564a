"""Operator alerts for failed runs and failed ERROR checks, through a configurable channel.

Each failure becomes one `alerts` row (unique dedup key: raised once), then goes to the
configured channel: email through the notification outbox (`alerts.raise_alert`), and/or a chat
webhook (Slack-compatible JSON `{"text": ...}`) delivered from `alert_deliveries` with retries.
The text names what failed, why, and links to the run in the Dagster UI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import psycopg

from billing_pipelines.lib.alerts import store as alerts
from billing_pipelines.lib.pg.queue import RetryPolicy

Conn = psycopg.Connection[Any]
CHAT = "chat"
MAX_CHAT_ATTEMPTS = 8
# Chat alerts retry on every sensor tick (no backoff) and dead-letter after MAX_CHAT_ATTEMPTS.
CHAT_POLICY = RetryPolicy(max_attempts=MAX_CHAT_ATTEMPTS, base_seconds=0.0, max_seconds=0.0)


@dataclass(frozen=True)
class AlertChannel:
    """Where alerts go: an email address (outbox), a chat webhook URL, or both."""

    email: str | None = None
    chat_webhook_url: str | None = None
    ui_url: str | None = None

    @property
    def configured(self) -> bool:
        """True when at least one channel would receive the alert."""
        return bool(self.email or self.chat_webhook_url)


@dataclass(frozen=True)
class Failure:
    """One failure worth an alert."""

    dedup_key: str
    kind: str
    summary: str
    reason: str
    link: str | None
    details: Mapping[str, Any]


def run_link(ui_url: str | None, run_id: str) -> str | None:
    """The run's page in the Dagster UI."""
    return f"{ui_url.rstrip('/')}/runs/{quote(run_id)}" if ui_url else None


def check_failure(
    *,
    run_id: str,
    job_name: str,
    asset: str,
    check_name: str,
    partition: str | None,
    description: str | None,
    metadata: Mapping[str, Any],
    ui_url: str | None,
) -> Failure:
    """The alert for a failed ERROR asset check in a run."""
    where = f"{asset}{f' [{partition}]' if partition else ''}"
    reason = description or "; ".join(f"{k}={v}" for k, v in list(metadata.items())[:8])
    return Failure(
        dedup_key=f"check_failed:{run_id}:{asset}:{check_name}:{partition or '-'}",
        kind="asset_check_failed",
        summary=f"ERROR check {check_name} failed on {where}",
        reason=reason or "the check did not pass",
        link=run_link(ui_url, run_id),
        details={
            "run_id": run_id,
            "job": job_name,
            "asset": asset,
            "check": check_name,
            "partition": partition,
            "metadata": dict(metadata),
        },
    )


def run_failure(*, run_id: str, job_name: str, error: str | None, ui_url: str | None) -> Failure:
    """The alert for a failed run."""
    return Failure(
        dedup_key=f"run_failed:{run_id}",
        kind="run_failed",
        summary=f"Run of {job_name} failed",
        reason=(error or "no error message").strip().splitlines()[0][:500],
        link=run_link(ui_url, run_id),
        details={"run_id": run_id, "job": job_name},
    )


def text_of(failure: Failure) -> str:
    """The one message a human reads: what, why, where to look."""
    lines = [f":rotating_light: {failure.summary}", f"Why: {failure.reason}"]
    if failure.link:
        lines.append(f"Run: {failure.link}")
    return "\n".join(lines)


def raise_failure(conn: Conn, failure: Failure, channel: AlertChannel) -> bool:
    """Record the alert once and queue it on every configured channel; False if seen before."""
    details = {**failure.details, "reason": failure.reason, "link": failure.link}
    inserted = alerts.raise_alert(
        conn,
        dedup_key=failure.dedup_key,
        kind=failure.kind,
        severity="critical",
        summary=failure.summary,
        details=details,
        notify=channel.email,
    )
    if inserted and channel.chat_webhook_url:
        conn.execute(
            """
            INSERT INTO alert_deliveries (alert_id, channel)
            SELECT id, %s FROM alerts WHERE dedup_key = %s
            ON CONFLICT DO NOTHING
            """,
            (CHAT, failure.dedup_key),
        )
    return inserted


Poster = Callable[[str, dict[str, Any]], None]


def post_json(url: str, body: dict[str, Any]) -> None:
    """POST the message to a chat webhook; raises on a non-2xx answer."""
    response = httpx.post(url, json=body, timeout=10.0)
    response.raise_for_status()


def deliver_chat(
    conn: Conn, webhook_url: str, *, post: Poster = post_json, limit: int = 50
) -> dict[str, int]:
    """Send pending chat alerts (oldest first); failures retry on the next call, then die."""
    # A thin adapter, not the shared leased queue: alert_deliveries is keyed by (alert, channel)
    # and has no next_attempt_at, claimed_at or dispatch columns. Its lease is the row lock of
    # this transaction (a concurrent sensor tick skips the locked rows), and a failure is
    # retried on the next tick without backoff. Moving it onto the leased queue would need a
    # migration and would change when chat alerts are retried; it shares the dead-letter rule.
    rows = conn.execute(
        """
        SELECT d.alert_id, d.attempts, a.summary, a.details
        FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
        WHERE d.channel = %s AND d.status = 'pending'
        ORDER BY d.created_at, d.alert_id LIMIT %s FOR UPDATE OF d SKIP LOCKED
        """,
        (CHAT, limit),
    ).fetchall()
    counts = {"sent": 0, "failed": 0, "dead": 0}
    for row in rows:
        details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
        failure = Failure(
            dedup_key="",
            kind="",
            summary=row["summary"],
            reason=str(details.get("reason") or ""),
            link=details.get("link"),
            details=details,
        )
        try:
            post(webhook_url, {"text": text_of(failure)})
        except (httpx.HTTPError, OSError) as exc:
            # The URL carries the webhook's secret: only the error class and status are kept.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            error = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
            dead = CHAT_POLICY.exhausted(row["attempts"] + 1)
            conn.execute(
                """
                UPDATE alert_deliveries SET attempts = attempts + 1, last_error = %s,
                    status = CASE WHEN %s THEN 'dead' ELSE 'pending' END
                WHERE alert_id = %s AND channel = %s
                """,
                (error, dead, row["alert_id"], CHAT),
            )
            counts["dead" if dead else "failed"] += 1
            continue
        conn.execute(
            """
            UPDATE alert_deliveries SET attempts = attempts + 1, status = 'sent', sent_at = now(),
                last_error = NULL
            WHERE alert_id = %s AND channel = %s
            """,
            (row["alert_id"], CHAT),
        )
        counts["sent"] += 1
    return counts
