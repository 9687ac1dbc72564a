"""Operator alerts for failed runs and failed ERROR checks, through a configurable channel.

Each failure becomes one `alerts` row (unique dedup key: raised once), then goes to the
configured channel: email through the notification outbox (`alerts.raise_alert`), and/or a chat
webhook (Slack-compatible JSON `{"text": ...}`) delivered from `alert_deliveries`, the shared
leased queue (`lib.pg.queue`), with backoff and a dead letter.
The text names what failed, why, and links to the run in the Dagster UI.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote, urlsplit

from billing_pipelines.lib.alerts import store as alerts
from billing_pipelines.lib.pg.queue import LeasedQueue, QueueTable, RetryPolicy

if TYPE_CHECKING:
    import psycopg

Conn: TypeAlias = "psycopg.Connection[Any]"
# Opens one transaction on the billing database (committed on success), e.g. BillingDatabase's.
Transaction = Callable[[], AbstractContextManager[Conn]]
CHAT = "chat"
MAX_CHAT_ATTEMPTS = 8
# Chat endpoints recover within minutes and an alert is stale after an hour: a failed post is
# retried after 30 s, 1 min, 2, 4, 8, 16 and 30 min (by the first delivery call after each; the
# alert sensors call it when they fire), and the eighth failure dead-letters the delivery. The
# default 10 min lease outlasts a batch of 50 posts at their 10 s timeout.
CHAT_POLICY = RetryPolicy(max_attempts=MAX_CHAT_ATTEMPTS, base_seconds=30.0, max_seconds=1800.0)


@dataclass(frozen=True)
class ChatDelivery:
    """One claimed chat delivery: which alert to post, and how many tries this one makes."""

    id: int
    alert_id: int
    attempts: int


# Chat deliveries are the shared leased queue: claimed rows are `sending`, owned by the
# delivering call, so an outcome is recorded only by the call that still holds the claim.
CHAT_TABLE = QueueTable(
    name="alert_deliveries",
    claimed_status="sending",
    done_statuses=("sent",),
    done_at="sent_at",
    owner="claimed_by",
)
CHAT_QUEUE: LeasedQueue[ChatDelivery] = LeasedQueue(CHAT_TABLE, CHAT_POLICY, ChatDelivery)


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


class _HideWebhookUrls(logging.Filter):
    """Shows only the host of a chat webhook URL in httpx's request log: the path is a secret."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(str(a) in self.urls for a in record.args):
            record.args = tuple(
                _host_only(str(a)) if str(a) in self.urls else a for a in record.args
            )
        return True


def _host_only(url: str) -> str:
    """The webhook's scheme and host, without the secret path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/<chat webhook>"


# httpx logs every request's full URL at INFO; a chat webhook's URL is its credential.
_HIDDEN_URLS = _HideWebhookUrls()
logging.getLogger("httpx").addFilter(_HIDDEN_URLS)


def post_json(url: str, body: dict[str, Any]) -> None:
    """POST the message to a chat webhook; raises on a non-2xx answer."""
    import httpx

    _HIDDEN_URLS.urls.add(url)
    response = httpx.post(url, json=body, timeout=10.0)
    response.raise_for_status()


def deliver_chat(
    transaction: Transaction, webhook_url: str, *, post: Poster = post_json, limit: int = 50
) -> dict[str, int]:
    """Post due chat alerts (oldest first) once each; failures back off, then dead-letter.

    The claim is committed before anything is posted, so a concurrent tick skips these rows and
    a tick that dies mid-way leaves them to be taken over once the lease expires. Each outcome is
    recorded in its own transaction right after its post.
    """
    import httpx

    owner = f"chat:{uuid.uuid4()}"
    with transaction() as conn:
        due = CHAT_QUEUE.select_for_dispatch(conn, limit=limit)
        claim = CHAT_QUEUE.claim_due(conn, [d.id for d in due], owner=owner)
        claimed = claim.claimed
        texts = _texts(conn, [row.alert_id for row in claimed])
        for row in claim.dead:
            # The alert itself stays recorded; its chat post is given up, and said so.
            alerts.raise_alert(
                conn,
                dedup_key=f"chat_dead:{row.id}",
                kind="chat_dead_letter",
                severity="warning",
                summary=f"chat delivery {row.id} of alert {row.alert_id} dead-lettered: "
                f"its {row.attempts} attempts were used up by calls that never finished",
                details={"delivery": row.id, "alert": row.alert_id, "attempts": row.attempts},
                notify=None,
            )
    counts = {"sent": 0, "failed": 0, "dead": len(claim.dead)}
    for row in claimed:
        try:
            post(webhook_url, {"text": texts[row.alert_id]})
        except (httpx.HTTPError, OSError) as exc:
            # The URL carries the webhook's secret: only the error class and status are kept.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            error = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
            with transaction() as conn:
                if CHAT_QUEUE.still_owned(conn, row.id, owner):
                    outcome = CHAT_QUEUE.record_failure(
                        conn, row.id, row.attempts, error, owner=owner
                    )
                    if outcome is not None:
                        counts["dead" if outcome == CHAT_TABLE.dead_status else "failed"] += 1
            continue
        with transaction() as conn:
            if CHAT_QUEUE.still_owned(conn, row.id, owner):
                CHAT_QUEUE.complete(conn, row.id, status="sent")
                counts["sent"] += 1
    return counts


def _texts(conn: Conn, alert_ids: list[int]) -> dict[int, str]:
    """The chat message of each alert, by alert id."""
    if not alert_ids:
        return {}
    rows = conn.execute(
        "SELECT id, summary, details FROM alerts WHERE id = ANY(%s)", (alert_ids,)
    ).fetchall()
    out = {}
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
        out[int(row["id"])] = text_of(failure)
    return out
