"""Dead letters back into a leased queue: chosen by id, by type or since a time, and audited.

After an outage longer than a queue's backoff window, every row received during it may be
`dead`. Requeueing makes a dead row `pending` again with its attempts reset (the next dispatch
asks for a new run, since its dispatch count moves on), keeps its last error for the record,
and appends one `audit_log` row per item: who asked, when, why, and the row before and after.
Only dead rows are touched; a row that is pending, running or done is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.pg.queue import QueueTable
from billing_pipelines.lib.tenants.access import audit

if TYPE_CHECKING:
    import psycopg

# Enough for any real outage; a larger selection is refused rather than half-done.
MAX_ROWS = 10_000


@dataclass(frozen=True)
class DeadLetters:
    """Where a queue's dead letters are and how an operator names them."""

    table: QueueTable
    # The column naming a row for people (the Stripe event id, the email's dedup key).
    item: str
    # The column "by type" selects on (the event type, the email template).
    kind: str
    # The column "since a time" selects on (when the row was received or queued).
    since: str
    # The audit log's entity type for one row.
    entity_type: str


@dataclass(frozen=True)
class Selection:
    """Which dead rows to requeue: all that match every given criterion (at least one)."""

    ids: tuple[int, ...] = ()
    kind: str | None = None
    since: datetime | None = None

    def check(self) -> None:
        """Refuse an empty selection (requeue everything by accident) or a naive time."""
        if not self.ids and self.kind is None and self.since is None:
            raise BillingConfigError("choose the dead letters: by id, by type, or since a time")
        if self.since is not None and self.since.tzinfo is None:
            raise BillingConfigError("since must carry a time zone, e.g. 2026-12-01T10:00:00+00:00")
        if self.kind is not None and not self.kind.strip():
            raise BillingConfigError("type must not be empty")

    def describe(self) -> str:
        """The selection in words, for the audit reason and the run's metadata."""
        parts = []
        if self.ids:
            parts.append("ids " + ",".join(str(i) for i in sorted(self.ids)))
        if self.kind is not None:
            parts.append(f"type {self.kind}")
        if self.since is not None:
            parts.append(f"since {self.since.isoformat()}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Requeued:
    """One dead row made pending again."""

    id: int
    item: str
    kind: str
    attempts: int
    last_error: str | None


def parse_since(value: str | None) -> datetime | None:
    """An ISO 8601 time with a zone (`Z` accepted), or one clear error naming the input."""
    if value is None or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BillingConfigError(
            f"since {value!r} is not a time: use ISO 8601, e.g. 2026-12-01T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise BillingConfigError(f"since {value!r} has no time zone: add Z or +00:00")
    return moment


def requeue_dead(
    conn: psycopg.Connection[Any],
    letters: DeadLetters,
    selection: Selection,
    *,
    actor: str,
    reason: str,
) -> list[Requeued]:
    """Make the selected dead rows pending with fresh attempts, auditing each; returns them."""
    from psycopg import sql

    selection.check()
    if not actor.strip() or not reason.strip():
        raise BillingConfigError("a requeue needs who asks for it and why (requested_by, reason)")
    t = letters.table
    names = {
        **t.identifiers(),
        "item": sql.Identifier(letters.item),
        "kind": sql.Identifier(letters.kind),
        "since": sql.Identifier(letters.since),
    }
    clear_owner = sql.SQL(", {} = NULL").format(sql.Identifier(t.owner)) if t.owner else sql.SQL("")
    statement = sql.SQL(
        """
        WITH chosen AS (
            SELECT {key}, {attempts} AS attempts, {last_error} AS last_error FROM {table}
            WHERE {status} = %(dead)s
              AND (cardinality(%(ids)s::bigint[]) = 0 OR {key} = ANY(%(ids)s))
              AND (%(kind)s::text IS NULL OR {kind} = %(kind)s)
              AND (%(since)s::timestamptz IS NULL OR {since} >= %(since)s)
            ORDER BY {key}
            LIMIT %(limit)s
            FOR UPDATE
        )
        UPDATE {table} q
        SET {status} = %(pending)s, {attempts} = 0, {next_attempt_at} = now(),
            {claimed_at} = NULL {clear_owner}
        FROM chosen WHERE q.{key} = chosen.{key}
        RETURNING q.{key} AS id, q.{item} AS item, q.{kind} AS kind,
                  chosen.attempts AS attempts, chosen.last_error AS last_error
        """
    ).format(**names, clear_owner=clear_owner)
    rows = conn.execute(
        statement,
        {
            "dead": t.dead_status,
            "pending": t.pending_status,
            "ids": list(selection.ids),
            "kind": selection.kind,
            "since": selection.since,
            "limit": MAX_ROWS + 1,
        },
    ).fetchall()
    if len(rows) > MAX_ROWS:
        raise BillingConfigError(
            f"more than {MAX_ROWS} dead letters match ({selection.describe()}): narrow the "
            "selection (by type, or a later since)"
        )
    requeued = sorted((Requeued(**_as_dict(r)) for r in rows), key=lambda r: r.id)
    for row in requeued:
        audit(
            conn,
            actor=actor,
            action=f"{t.name}.requeue",
            entity_type=letters.entity_type,
            entity_id=row.item,
            reason=f"{reason} (selected: {selection.describe()})",
            before={
                "id": row.id,
                "status": t.dead_status,
                "attempts": row.attempts,
                "last_error": row.last_error,
            },
            after={"id": row.id, "status": t.pending_status, "attempts": 0},
        )
    return requeued


def _as_dict(row: Any) -> dict[str, Any]:
    if isinstance(row, dict):
        return row
    return dict(zip(("id", "item", "kind", "attempts", "last_error"), row, strict=True))


def skipped_ids(requested: Sequence[int], requeued: Sequence[Requeued]) -> list[int]:
    """Ids the operator named that were not requeued (unknown, or not dead)."""
    done = {r.id for r in requeued}
    return sorted({i for i in requested if i not in done})
