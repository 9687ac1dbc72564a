"""One leased work queue in a PostgreSQL table: dispatch, claim with a lease, retry, dead-letter.

Life of a row: `pending` -> a sensor marks it dispatched (`dispatched_at`, `dispatch_count`; the
count is part of the run_key, so a re-dispatch asks for a new run) -> the run claims it (the
table's claimed status, `attempts + 1`, FOR UPDATE SKIP LOCKED; only once its backoff is over,
whoever asks: an op retry or a re-executed run cannot burn attempts early) -> a done status, or
`failed` with a backoff, or `dead` after `max_attempts`. A claim older than the lease belongs to
a run that died and is taken over by the next run; a row whose attempts are used up when it is
claimed (its process kept crashing) is dead-lettered by that claim instead, so a crashing row
ends `dead` like a failing one; a dispatched row nobody claimed within the
redispatch time (the run never started) is dispatched again. Handlers must be idempotent: a
taken-over row may run twice.

The webhook queue (`webhook_events`), the email outbox (`notification_outbox`) and chat alert
delivery (`alert_deliveries`) are this queue with their own table, status words and retry
policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import psycopg
    from _typeshed import DataclassInstance
    from psycopg import sql

Row = TypeVar("Row", bound="DataclassInstance")
Item = TypeVar("Item")

# Longest text kept in the error and outcome columns: enough to diagnose, never a whole body.
ERROR_CHARS = 2000
OUTCOME_CHARS = 1000


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts, the dead-letter threshold and the lease times."""

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

    def exhausted(self, attempts: int) -> bool:
        """True when a failure after `attempts` tries dead-letters the row instead of retrying."""
        return attempts >= self.max_attempts


@dataclass(frozen=True)
class Dispatched:
    """A row a sensor asks a run for; dispatch_count makes a re-dispatch a new run_key."""

    id: int
    dispatch_count: int


@dataclass(frozen=True)
class Claim(Generic[Row]):
    """What one claim took: the rows this run now holds, and the rows it dead-lettered."""

    claimed: list[Row]
    dead: list[Row]


def batch_run_key(prefix: str, batch: Sequence[Dispatched]) -> str:
    """A run_key naming the rows (first-last) and fingerprinting each (id, dispatch) pair."""
    if not batch:
        raise ValueError("empty batch")
    ids = sorted(batch, key=lambda d: d.id)
    digest = hashlib.sha256(",".join(f"{d.id}.{d.dispatch_count}" for d in ids).encode())
    return f"{prefix}:{ids[0].id}-{ids[-1].id}:{len(ids)}:{digest.hexdigest()[:12]}"


def chunks(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Split dispatched rows into batches of at most `size`, keeping their order."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class QueueTable:
    """A table holding a leased queue: its name, its status words and its column names."""

    name: str
    # What a claimed row is called while a run works on it ('processing', 'sending').
    claimed_status: str
    # The final statuses a run may record, and the column stamped when it does.
    done_statuses: tuple[str, ...]
    done_at: str
    # The column naming the claiming run; without one, a run cannot check it still owns a row.
    owner: str | None = None
    # The column for the handler's decision, if the table keeps one.
    outcome: str | None = None
    pending_status: str = "pending"
    failed_status: str = "failed"
    dead_status: str = "dead"
    key: str = "id"
    status: str = "status"
    attempts: str = "attempts"
    next_attempt_at: str = "next_attempt_at"
    claimed_at: str = "claimed_at"
    dispatched_at: str = "dispatched_at"
    dispatch_count: str = "dispatch_count"
    last_error: str = "last_error"

    def identifiers(self) -> dict[str, sql.Composable]:
        """Every table and column name, quoted, for composing the queue's statements."""
        from psycopg import sql

        return {
            "table": sql.Identifier(self.name),
            "key": sql.Identifier(self.key),
            "status": sql.Identifier(self.status),
            "attempts": sql.Identifier(self.attempts),
            "next_attempt_at": sql.Identifier(self.next_attempt_at),
            "claimed_at": sql.Identifier(self.claimed_at),
            "dispatched_at": sql.Identifier(self.dispatched_at),
            "dispatch_count": sql.Identifier(self.dispatch_count),
            "last_error": sql.Identifier(self.last_error),
            "done_at": sql.Identifier(self.done_at),
        }


class LeasedQueue(Generic[Row]):
    """The queue operations on one table; claimed rows come back as `row_type` instances.

    The fields of `row_type` (a dataclass) are the columns a claim returns, so each user names
    what it needs (an event and its payload, an email and its recipient) and nothing more.
    """

    def __init__(self, table: QueueTable, policy: RetryPolicy, row_type: type[Row]) -> None:
        self.table = table
        self.policy = policy
        self.row_type = row_type
        self._columns = [f.name for f in fields(row_type)]
        missing = {table.key, table.attempts} - set(self._columns)
        if missing:
            raise ValueError(f"{row_type.__name__} lacks the queue columns {sorted(missing)}")

    def _sql(self, template: str, **extra: sql.Composable) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(template).format(**self.table.identifiers(), **extra)

    def select_for_dispatch(self, conn: psycopg.Connection[Any], *, limit: int) -> list[Dispatched]:
        """Due rows not already handed to a live run, marked as dispatched now (oldest first).

        Due means: pending or failed with its backoff over, and not dispatched since it became
        due (or dispatched so long ago that the run never started); or claimed by a run whose
        lease expired, and not dispatched since that claim.
        """
        statement = self._sql(
            """
            WITH due AS (
                SELECT {key} FROM {table}
                WHERE (
                        {status} IN (%(pending)s, %(failed)s) AND {next_attempt_at} <= now()
                        AND ({dispatched_at} IS NULL
                             OR {dispatched_at} < {next_attempt_at}
                             OR {dispatched_at} < now() - make_interval(secs => %(redispatch)s))
                      )
                   OR ({status} = %(claimed)s
                       AND {claimed_at} < now() - make_interval(secs => %(lease)s)
                       AND ({dispatched_at} IS NULL OR {dispatched_at} < {claimed_at}
                            OR {dispatched_at} < now() - make_interval(secs => %(redispatch)s)))
                ORDER BY {key}
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            )
            UPDATE {table} q
            SET {dispatched_at} = now(), {dispatch_count} = q.{dispatch_count} + 1
            FROM due WHERE q.{key} = due.{key}
            RETURNING q.{key} AS id, q.{dispatch_count} AS dispatch_count
            """
        )
        rows = conn.execute(
            statement,
            {
                **self._statuses(),
                "limit": limit,
                "lease": self.policy.lease_seconds,
                "redispatch": self.policy.redispatch_seconds,
            },
        ).fetchall()
        out = [Dispatched(int(_col(r, 0, "id")), int(_col(r, 1, "dispatch_count"))) for r in rows]
        return sorted(out, key=lambda d: d.id)

    def claim(
        self, conn: psycopg.Connection[Any], row_ids: Sequence[int], *, owner: str | None = None
    ) -> list[Row]:
        """The rows `claim_due` takes; rows it dead-letters are left to `claim_due`'s callers."""
        return self.claim_due(conn, row_ids, owner=owner).claimed

    def claim_due(
        self, conn: psycopg.Connection[Any], row_ids: Sequence[int], *, owner: str | None = None
    ) -> Claim[Row]:
        """Take the given rows that are due and not held by a live run (SKIP LOCKED).

        Due means pending, or failed with its backoff over, or claimed by a run whose lease
        expired. A claimed row counts one more attempt and starts its lease at the claim (the
        statement's time, not its transaction's: a claim may commit with earlier work); `owner` (the
        run id) is recorded when the table keeps one, so a run can later check it was not taken
        over. A due row whose attempts are already used up (its runs kept dying before they
        could record a failure) is dead-lettered instead and returned in `dead`, for an alert.
        """
        from psycopg import sql

        if (owner is None) != (self.table.owner is None):
            raise ValueError(
                f"{self.table.name}: an owner is required exactly when the table records one"
            )
        set_owner = (
            sql.SQL(", {} = %(owner)s").format(sql.Identifier(self.table.owner))
            if self.table.owner
            else sql.SQL("")
        )
        clear_owner = (
            sql.SQL(", {} = NULL").format(sql.Identifier(self.table.owner))
            if self.table.owner
            else sql.SQL("")
        )
        returning = sql.SQL(", ").join(
            sql.SQL("q.{}").format(sql.Identifier(c)) for c in self._columns
        )
        params = {
            **self._statuses(),
            "ids": list(row_ids),
            "owner": owner,
            "lease": self.policy.lease_seconds,
            "max_attempts": self.policy.max_attempts,
            "dead": self.table.dead_status,
        }
        due = self._sql(
            """
                SELECT {key} FROM {table}
                WHERE {key} = ANY(%(ids)s)
                  AND (({status} IN (%(pending)s, %(failed)s) AND {next_attempt_at} <= now())
                       OR ({status} = %(claimed)s
                           AND {claimed_at} < now() - make_interval(secs => %(lease)s)))
            """
        )
        bury = self._sql(
            """
            WITH spent AS ({due}
                  AND {attempts} >= %(max_attempts)s
                ORDER BY {key}
                FOR UPDATE SKIP LOCKED
            )
            UPDATE {table} q
            SET {status} = %(dead)s, {claimed_at} = NULL {clear_owner},
                {last_error} = left(
                    'attempts used up: ' || q.{attempts} || ' of ' || %(max_attempts)s
                    || ' when claimed again (a run that held it died without recording why)'
                    || coalesce('; last error: ' || q.{last_error}, ''), %(error_chars)s)
            FROM spent WHERE q.{key} = spent.{key}
            RETURNING {returning}
            """,
            due=due,
            clear_owner=clear_owner,
            returning=returning,
        )
        cursor = conn.execute(bury, {**params, "error_chars": ERROR_CHARS})
        dead = [self.row_type(**_as_dict(cursor, r)) for r in cursor.fetchall()]
        statement = self._sql(
            """
            WITH mine AS ({due}
                  AND {attempts} < %(max_attempts)s
                ORDER BY {key}
                FOR UPDATE SKIP LOCKED
            )
            UPDATE {table} q
            SET {status} = %(claimed)s, {attempts} = q.{attempts} + 1,
                {claimed_at} = statement_timestamp()
                {set_owner}
            FROM mine WHERE q.{key} = mine.{key}
            RETURNING {returning}
            """,
            due=due,
            set_owner=set_owner,
            returning=returning,
        )
        cursor = conn.execute(statement, params)
        claimed = [self.row_type(**_as_dict(cursor, r)) for r in cursor.fetchall()]
        return Claim(claimed=self._sorted(claimed), dead=self._sorted(dead))

    def _sorted(self, rows: list[Row]) -> list[Row]:
        return sorted(rows, key=lambda row: int(getattr(row, self.table.key)))

    def still_owned(self, conn: psycopg.Connection[Any], row_id: int, owner: str) -> bool:
        """Lock the row and confirm this run still holds the claim (not taken over after a lease).

        Call it in the transaction that records the row's outcome: the lock keeps a takeover
        from slipping in between the check and the write.
        """
        from psycopg import sql

        if self.table.owner is None:
            raise ValueError(f"{self.table.name} records no owner: a claim cannot be checked")
        statement = self._sql(
            "SELECT {status}, {owner} FROM {table} WHERE {key} = %s FOR UPDATE",
            owner=sql.Identifier(self.table.owner),
        )
        row = conn.execute(statement, (row_id,)).fetchone()
        return (
            row is not None
            and _col(row, 0, self.table.status) == self.table.claimed_status
            and _col(row, 1, self.table.owner) == owner
        )

    def complete(
        self,
        conn: psycopg.Connection[Any],
        row_id: int,
        *,
        status: str,
        outcome: str | None = None,
    ) -> None:
        """Record a final status (and the handler's decision, where kept) in the caller's tx."""
        from psycopg import sql

        if status not in self.table.done_statuses:
            raise ValueError(f"not a final status of {self.table.name}: {status}")
        if outcome is not None and self.table.outcome is None:
            raise ValueError(f"{self.table.name} keeps no outcome")
        set_outcome = (
            sql.SQL(", {} = %(outcome)s").format(sql.Identifier(self.table.outcome))
            if self.table.outcome
            else sql.SQL("")
        )
        statement = self._sql(
            """
            UPDATE {table}
            SET {status} = %(status)s, {done_at} = now(), {last_error} = NULL {set_outcome}
            WHERE {key} = %(id)s
            """,
            set_outcome=set_outcome,
        )
        conn.execute(
            statement,
            {
                "status": status,
                "outcome": None if outcome is None else outcome[:OUTCOME_CHARS],
                "id": row_id,
            },
        )

    def record_failure(
        self,
        conn: psycopg.Connection[Any],
        row_id: int,
        attempts: int,
        error: str,
        *,
        owner: str | None = None,
        permanent: bool = False,
    ) -> str | None:
        """Schedule a retry with backoff, or dead-letter after max_attempts; returns the status.

        Only the claim that failed may record it: the row must still be claimed with this
        attempt number (and by `owner`, where the table keeps one). After a takeover the row
        belongs to another run, which may already have processed it: nothing is written and
        None is returned, so the caller raises no alert. The claim is released, so the next
        dispatch after the backoff can take the row. A `permanent` failure (one no retry can
        fix, such as an invalid recipient) is dead-lettered at once.
        """
        from psycopg import sql

        if (owner is None) != (self.table.owner is None):
            raise ValueError(
                f"{self.table.name}: an owner is required exactly when the table records one"
            )
        status = (
            self.table.dead_status
            if permanent or self.policy.exhausted(attempts)
            else self.table.failed_status
        )
        clear_owner = (
            sql.SQL(", {} = NULL").format(sql.Identifier(self.table.owner))
            if self.table.owner
            else sql.SQL("")
        )
        same_owner = (
            sql.SQL(" AND {} = %(owner)s").format(sql.Identifier(self.table.owner))
            if self.table.owner
            else sql.SQL("")
        )
        statement = self._sql(
            """
            UPDATE {table}
            SET {status} = %(status)s, {last_error} = %(error)s, {claimed_at} = NULL {clear_owner},
                {next_attempt_at} = now() + make_interval(secs => %(backoff)s)
            WHERE {key} = %(id)s AND {status} = %(claimed)s AND {attempts} = %(attempts)s
                {same_owner}
            RETURNING {key}
            """,
            clear_owner=clear_owner,
            same_owner=same_owner,
        )
        row = conn.execute(
            statement,
            {
                "status": status,
                "error": error[:ERROR_CHARS],
                "backoff": self.policy.backoff_seconds(attempts),
                "id": row_id,
                "claimed": self.table.claimed_status,
                "attempts": attempts,
                "owner": owner,
            },
        ).fetchone()
        return None if row is None else status

    def depth(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        """Row counts by status, for metadata and health checks."""
        statement = self._sql("SELECT {status} AS status, count(*) AS n FROM {table} GROUP BY 1")
        return {
            str(_col(r, 0, "status")): int(_col(r, 1, "n"))
            for r in conn.execute(statement).fetchall()
        }

    def _statuses(self) -> dict[str, str]:
        return {
            "pending": self.table.pending_status,
            "failed": self.table.failed_status,
            "claimed": self.table.claimed_status,
        }


def _col(row: Any, index: int, name: str) -> Any:
    """One value of a row from a dict_row or a tuple_row connection."""
    return row[name] if isinstance(row, dict) else row[index]


def _as_dict(cursor: psycopg.Cursor[Any], row: Any) -> dict[str, Any]:
    """A row as {column: value}, whatever row factory the connection uses."""
    if isinstance(row, dict):
        return row
    names = [c.name for c in cursor.description or ()]
    return dict(zip(names, row, strict=True))
