"""The Postgres webhook queue: store once by event id, then dispatch, claim, retry, dead-letter.

Life of a row: `pending` (stored by the receiver or the recovery job) -> the sensor marks it
dispatched and asks for a run whose run_key names the row ids -> the run claims it
(`processing`, FOR UPDATE SKIP LOCKED) -> `processed` / `ignored`, or `failed` with a backoff,
or `dead` after `max_attempts` (with an alert). A claim older than the lease (a crashed run)
is taken over by the next run; handlers are idempotent, so a re-run is harmless. The dispatch,
claim and retry steps are the shared leased queue (`lib.pg.queue`) on the `webhook_events` table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.pg.queue import LeasedQueue, QueueTable, RetryPolicy
from billing_pipelines.lib.pg.requeue import DeadLetters

if TYPE_CHECKING:
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
class ClaimedEvent:
    """A row this run now owns: its event and its attempt number (1 for the first try)."""

    id: int
    event_id: str
    event_type: str
    object_id: str | None
    payload: dict[str, Any]
    attempts: int
    source: str


# The webhook queue: claimed rows are `processing` and name their run (claimed_by), so a run
# re-checks its claim before applying an effect; the handler's decision is kept in `outcome`.
EVENTS_TABLE = QueueTable(
    name="webhook_events",
    claimed_status="processing",
    done_statuses=("processed", "ignored"),
    done_at="processed_at",
    owner="claimed_by",
    outcome="outcome",
)


# Backoff 30 s, 1 min, 2 min, ... capped at 6 h; a 10 min lease; re-dispatch after 5 min. The
# dead-letter threshold is a run setting (WEBHOOK_MAX_ATTEMPTS): see `events_policy`.
EVENTS_POLICY = RetryPolicy()


def events_policy(max_attempts: int) -> RetryPolicy:
    """The webhook queue's retry policy, dead-lettering after `max_attempts` tries."""
    return replace(EVENTS_POLICY, max_attempts=max_attempts)


def events_queue(policy: RetryPolicy = EVENTS_POLICY) -> LeasedQueue[ClaimedEvent]:
    """The webhook_events queue under a retry policy."""
    return LeasedQueue(EVENTS_TABLE, policy, ClaimedEvent)


# Dead webhook rows as an operator names them: by row id, by event type, or received since.
DEAD_EVENTS = DeadLetters(
    EVENTS_TABLE,
    item="event_id",
    kind="event_type",
    since="received_at",
    entity_type="webhook_event",
)
