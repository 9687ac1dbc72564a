"""The Postgres webhook queue: store once by event id, dispatch, claim, retry, dead-letter.

Life of a row: `pending` (stored by the receiver or the recovery job) -> the sensor marks it
dispatched and asks for a run whose run_key names the row ids -> the run claims it
(`processing`, FOR UPDATE SKIP LOCKED) -> `processed` / `ignored`, or `failed` with a backoff,
or `dead` after `max_attempts` (with an alert). A claim older than the lease (a crashed run)
is taken over by the next run; handlers are idempotent, so a re-run is harmless.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg


class MalformedEventError(ValueError):
    """The body is not a Stripe event (bad JSON or missing id/type)."""


@dataclass(frozen=True)
class StoredEvent:
    """The columns of one queue row, parsed from a Stripe event body."""

    event_id: str
    event_type: str
    api_version: str | None
    livemode: bool
    created: datetime | None
    object_id: str | None
    payload: str


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between handler attempts and the dead-letter threshold."""

    max_attempts: int = 8
    base_seconds: float = 30.0
    max_seconds: float = 6 * 3600.0
    # A claim older than this belongs to a run that died: the row is taken over.
    lease_seconds: float = 600.0
    # A dispatched row nobody claimed within this time (run never started) is dispatched again.
    redispatch_seconds: float = 300.0

    def backoff_seconds(self, attempts: int) -> float:
        """Delay before attempt `attempts + 1`: base, 2x base, 4x base, ... capped."""
        if attempts < 1:
            return 0.0
        return float(min(self.max_seconds, self.base_seconds * 2 ** (attempts - 1)))


def parse_event(body: bytes) -> StoredEvent:
    """Validate the shape of a Stripe event body and extract the queue columns."""
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedEventError("body is not valid JSON") from None
    if not isinstance(event, dict):
        raise MalformedEventError("body is not a JSON object")
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not event_id.startswith("evt_"):
        raise MalformedEventError("event has no id")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedEventError("event has no type")
    if event.get("object") not in (None, "event"):
        raise MalformedEventError("object is not an event")
    created = event.get("created")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    object_id = obj.get("id") if isinstance(obj, dict) else None
    return StoredEvent(
        event_id=event_id,
        event_type=event_type,
        api_version=event.get("api_version") if isinstance(event.get("api_version"), str) else None,
        livemode=bool(event.get("livemode", False)),
        created=datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
        object_id=object_id if isinstance(object_id, str) else None,
        # Postgres jsonb rejects \u0000; Stripe never sends it, a forged body could.
        payload=body.decode("utf-8"),
    )


INSERT_SQL = """
    INSERT INTO webhook_events (event_id, event_type, api_version, livemode, stripe_created,
                                object_id, payload, source)
    VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id
"""


def insert_params(event: StoredEvent, source: str) -> tuple[Any, ...]:
    """Bound parameters of INSERT_SQL for one event."""
    return (
        event.event_id,
        event.event_type,
        event.api_version,
        event.livemode,
        event.created,
        event.object_id,
        event.payload,
        source,
    )


def insert_event(conn: psycopg.Connection[Any], event: StoredEvent, source: str) -> int | None:
    """Store the event once; returns the new row id, or None if the event id was known."""
    row = conn.execute(INSERT_SQL, insert_params(event, source)).fetchone()
    return None if row is None else int(_first(row))


def _first(row: Any) -> Any:
    return row["id"] if isinstance(row, dict) else row[0]


@dataclass(frozen=True)
class Dispatched:
    """A row the sensor asks a run for; dispatch_count makes a re-dispatch a new run_key."""

    id: int
    dispatch_count: int


def select_for_dispatch(
    conn: psycopg.Connection[Any], *, limit: int, policy: RetryPolicy
) -> list[Dispatched]:
    """Due rows not already handed to a live run, marked as dispatched now (oldest first)."""
    rows = conn.execute(
        """
        WITH due AS (
            SELECT id FROM webhook_events
            WHERE (
                    status IN ('pending', 'failed') AND next_attempt_at <= now()
                    AND (dispatched_at IS NULL
                         OR dispatched_at < next_attempt_at
                         OR dispatched_at < now() - make_interval(secs => %(redispatch)s))
                  )
               OR (status = 'processing'
                   AND claimed_at < now() - make_interval(secs => %(lease)s)
                   AND (dispatched_at IS NULL OR dispatched_at < claimed_at
                        OR dispatched_at < now() - make_interval(secs => %(redispatch)s)))
            ORDER BY id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_events w
        SET dispatched_at = now(), dispatch_count = w.dispatch_count + 1
        FROM due WHERE w.id = due.id
        RETURNING w.id, w.dispatch_count
        """,
        {"limit": limit, "lease": policy.lease_seconds, "redispatch": policy.redispatch_seconds},
    ).fetchall()
    out = [Dispatched(int(r["id"]), int(r["dispatch_count"])) for r in rows]
    return sorted(out, key=lambda d: d.id)


def batch_run_key(prefix: str, batch: Sequence[Dispatched]) -> str:
    """A run_key naming the rows (first-last) and fingerprinting each (id, dispatch) pair."""
    if not batch:
        raise ValueError("empty batch")
    ids = sorted(batch, key=lambda d: d.id)
    digest = hashlib.sha256(",".join(f"{d.id}.{d.dispatch_count}" for d in ids).encode())
    return f"{prefix}:{ids[0].id}-{ids[-1].id}:{len(ids)}:{digest.hexdigest()[:12]}"


def chunks(items: Sequence[Dispatched], size: int) -> list[list[Dispatched]]:
    """Split dispatched rows into batches of at most `size`."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class ClaimedEvent:
    """A row this run now owns: its event and its attempt number (1 for the first try)."""

    id: int
    event_id: str
    event_type: str
    object_id: str | None
    payload: dict[str, Any]
    attempts: int
    source: str


def claim(
    conn: psycopg.Connection[Any], row_ids: Sequence[int], *, owner: str, policy: RetryPolicy
) -> list[ClaimedEvent]:
    """Take the given rows that are still due and not owned by a live run (SKIP LOCKED)."""
    rows = conn.execute(
        """
        WITH mine AS (
            SELECT id FROM webhook_events
            WHERE id = ANY(%(ids)s)
              AND (status IN ('pending', 'failed')
                   OR (status = 'processing'
                       AND claimed_at < now() - make_interval(secs => %(lease)s)))
            ORDER BY id
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_events w
        SET status = 'processing', attempts = w.attempts + 1, claimed_at = now(),
            claimed_by = %(owner)s
        FROM mine WHERE w.id = mine.id
        RETURNING w.id, w.event_id, w.event_type, w.object_id, w.payload, w.attempts, w.source
        """,
        {"ids": list(row_ids), "owner": owner, "lease": policy.lease_seconds},
    ).fetchall()
    return sorted(
        (
            ClaimedEvent(
                id=int(r["id"]),
                event_id=r["event_id"],
                event_type=r["event_type"],
                object_id=r["object_id"],
                payload=r["payload"],
                attempts=int(r["attempts"]),
                source=r["source"],
            )
            for r in rows
        ),
        key=lambda c: c.id,
    )


def still_owned(conn: psycopg.Connection[Any], row_id: int, owner: str) -> bool:
    """Lock the row and confirm this run still owns the claim (not taken over after a lease)."""
    row = conn.execute(
        "SELECT status, claimed_by FROM webhook_events WHERE id = %s FOR UPDATE", (row_id,)
    ).fetchone()
    return row is not None and row["status"] == "processing" and row["claimed_by"] == owner


def complete(conn: psycopg.Connection[Any], row_id: int, *, status: str, outcome: str) -> None:
    """Record the handler's decision (processed or ignored) in the same transaction as it."""
    if status not in ("processed", "ignored"):
        raise ValueError(f"not a final status: {status}")
    conn.execute(
        """
        UPDATE webhook_events
        SET status = %s, outcome = %s, processed_at = now(), last_error = NULL
        WHERE id = %s
        """,
        (status, outcome[:1000], row_id),
    )


def record_failure(
    conn: psycopg.Connection[Any], row_id: int, attempts: int, error: str, policy: RetryPolicy
) -> str:
    """Schedule a retry with backoff, or dead-letter after max_attempts; returns the status."""
    dead = attempts >= policy.max_attempts
    conn.execute(
        """
        UPDATE webhook_events
        SET status = %s, last_error = %s, claimed_at = NULL, claimed_by = NULL,
            next_attempt_at = now() + make_interval(secs => %s)
        WHERE id = %s
        """,
        ("dead" if dead else "failed", error[:2000], policy.backoff_seconds(attempts), row_id),
    )
    return "dead" if dead else "failed"


def queue_depth(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Row counts by status, for metadata and health checks."""
    rows = conn.execute("SELECT status, count(*) AS n FROM webhook_events GROUP BY status")
    return {r["status"]: int(r["n"]) for r in rows}
