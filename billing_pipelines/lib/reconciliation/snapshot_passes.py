"""Daily invoice and subscription snapshots whose cost grows with change: full or incremental.

Each snapshot date still holds every invoice (with lines), customer and subscription as of its
`taken_at`, so everything that reads the snapshot tables reads them as before. How a date was
filled is recorded in `stripe_snapshot_passes`:

- a **full pass** lists everything (`stripe.snapshots`), as the snapshot always did. It runs
  when there is no previous pass to start from (first run, tables from before passes were
  recorded, a business clock moved backwards), when a test clock appeared that the previous pass
  did not see (no frontier for it), when the last full pass is `full_pass_every_days` old or
  older, or when asked. It is exact by construction and catches what an incremental pass cannot
  see: a change to an object in a status the listings treat as final (paid, void, ended);
- an **incremental pass** reads what can have changed (`stripe.incremental`) and carries every
  other row of the previous snapshot forward to the new date in PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import astuple, dataclass, fields
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.reconciliation import snapshots as snapshot_store
from billing_pipelines.lib.stripe import incremental
from billing_pipelines.lib.stripe import snapshots as stripe_snapshots
from billing_pipelines.lib.stripe.incremental import Frontier

if TYPE_CHECKING:  # the definitions import this module; only a pass needs the drivers
    import psycopg

    from billing_pipelines.lib.stripe.client import StripeClient

# Connections return rows as dicts (psycopg's dict_row), as the billing database's pool does.
Conn: TypeAlias = "psycopg.Connection[Any]"
Transaction = Callable[[], AbstractContextManager[Conn]]

FULL_PASS_EVERY_DAYS = 7
INVOICES = "invoices"
SUBSCRIPTIONS = "subscriptions"


@dataclass(frozen=True)
class PassRecord:
    """How one snapshot date was taken (a row of stripe_snapshot_passes)."""

    kind: str
    snapshot_date: date
    mode: str
    reason: str
    taken_at: datetime
    frontier: Frontier
    full_pass_date: date
    objects_read: int
    read_by_id: int
    carried: int


def last_pass(conn: Conn, kind: str) -> PassRecord | None:
    """The newest recorded pass of `kind`, if any."""
    row = conn.execute(
        "SELECT kind, snapshot_date, mode, reason, taken_at, wall_started, clocks, "
        "full_pass_date, objects_read, read_by_id, carried FROM stripe_snapshot_passes "
        "WHERE kind = %s ORDER BY snapshot_date DESC LIMIT 1",
        (kind,),
    ).fetchone()
    if row is None:
        return None
    clocks = {str(k): int(v) for k, v in (row["clocks"] or {}).items()}
    return PassRecord(
        kind=row["kind"],
        snapshot_date=row["snapshot_date"],
        mode=row["mode"],
        reason=row["reason"],
        taken_at=row["taken_at"],
        frontier=Frontier(int(row["wall_started"]), clocks),
        full_pass_date=row["full_pass_date"],
        objects_read=row["objects_read"],
        read_by_id=row["read_by_id"],
        carried=row["carried"],
    )


def record_pass(conn: Conn, rec: PassRecord) -> None:
    """Store how the day's snapshot was taken (a re-run of the day replaces its row)."""
    conn.execute(
        """
        INSERT INTO stripe_snapshot_passes (kind, snapshot_date, mode, reason, taken_at,
            wall_started, clocks, full_pass_date, objects_read, read_by_id, carried)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (kind, snapshot_date) DO UPDATE SET mode = EXCLUDED.mode,
            reason = EXCLUDED.reason, taken_at = EXCLUDED.taken_at,
            wall_started = EXCLUDED.wall_started, clocks = EXCLUDED.clocks,
            full_pass_date = EXCLUDED.full_pass_date, objects_read = EXCLUDED.objects_read,
            read_by_id = EXCLUDED.read_by_id, carried = EXCLUDED.carried
        """,
        (
            rec.kind,
            rec.snapshot_date,
            rec.mode,
            rec.reason,
            rec.taken_at,
            rec.frontier.wall_started,
            _jsonb(rec.frontier.clocks),
            rec.full_pass_date,
            rec.objects_read,
            rec.read_by_id,
            rec.carried,
        ),
    )


def choose_pass(
    last: PassRecord | None,
    stored_dates: set[date],
    today: date,
    now: Frontier,
    every_days: int = FULL_PASS_EVERY_DAYS,
    force_full: bool = False,
) -> tuple[str, str]:
    """("full" | "incremental", why): incremental only when the previous pass can be trusted."""
    if force_full:
        return "full", "a full pass was asked for"
    if last is None:
        return "full", "no previous pass to start from"
    if last.snapshot_date > today:
        return "full", f"the previous pass is dated {last.snapshot_date}, after {today}"
    if last.snapshot_date not in stored_dates:
        return "full", f"the previous pass's snapshot of {last.snapshot_date} is missing"
    if today - last.full_pass_date >= timedelta(days=every_days):
        return "full", f"the last full pass ({last.full_pass_date}) is {every_days}+ days old"
    unseen = last.frontier.unseen_clocks(now)
    if unseen:
        return "full", f"test clock {unseen[0]} appeared since the previous pass"
    return "incremental", f"changes since the pass of {last.snapshot_date}"


# ---- carrying rows forward -------------------------------------------------------------------


def _columns(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _carry(
    conn: Conn,
    table: str,
    key: str,
    columns: list[str],
    from_day: date,
    to_day: date,
    drop: Sequence[str],
    taken_at: datetime | None,
) -> int:
    """Copy `from_day`'s rows except `drop` to `to_day` (replacing it); returns rows carried."""
    cols = ", ".join(columns)
    # Table and column names are module constants and dataclass fields, never input. A temp
    # table holds the rows first, so a re-run of the same day can carry from itself.
    conn.execute(
        f"CREATE TEMP TABLE carry_rows AS SELECT {cols} FROM {table} "  # noqa: S608
        f"WHERE snapshot_date = %s AND NOT ({key} = ANY(%s))",
        (from_day, list(drop)),
    )
    conn.execute(f"DELETE FROM {table} WHERE snapshot_date = %s", (to_day,))  # noqa: S608
    if taken_at is None:
        cur = conn.execute(
            f"INSERT INTO {table} (snapshot_date, {cols}) "  # noqa: S608
            f"SELECT %s, {cols} FROM carry_rows",
            (to_day,),
        )
    else:
        cur = conn.execute(
            f"INSERT INTO {table} (snapshot_date, {cols}, taken_at) "  # noqa: S608
            f"SELECT %s, {cols}, %s FROM carry_rows",
            (to_day, taken_at),
        )
    conn.execute("DROP TABLE carry_rows")
    return int(cur.rowcount)


def _append(conn: Conn, table: str, day: date, rows: Sequence[Any], extra: tuple[Any, ...]) -> None:
    """COPY dataclass rows into `table` for `day` (after the carried ones)."""
    if not rows:
        return
    columns = ["snapshot_date", *_columns(type(rows[0])), *(["taken_at"] if extra else [])]
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row((day, *astuple(row), *extra))


def store_invoice_changes(
    conn: Conn,
    day: date,
    previous: date,
    changes: incremental.InvoiceChanges,
    taken_at: datetime,
) -> int:
    """The day's invoice snapshot: the previous one, changed invoices replaced, gone ones out."""
    drop = sorted({i.invoice_id for i in changes.invoices} | changes.gone)
    carried = _carry(
        conn,
        "stripe_invoice_snapshots",
        "invoice_id",
        _columns(stripe_snapshots.InvoiceSnapshot),
        previous,
        day,
        drop,
        taken_at,
    )
    _carry(
        conn,
        "stripe_invoice_line_snapshots",
        "invoice_id",
        _columns(stripe_snapshots.InvoiceLineSnapshot),
        previous,
        day,
        drop,
        None,
    )
    _append(conn, "stripe_invoice_snapshots", day, changes.invoices, (taken_at,))
    _append(conn, "stripe_invoice_line_snapshots", day, changes.lines, ())
    return carried


def store_subscription_changes(
    conn: Conn,
    day: date,
    previous: date,
    changes: incremental.SubscriptionChanges,
    taken_at: datetime,
) -> int:
    """The day's customers (all, listed) and subscriptions (previous ones, changed replaced)."""
    drop = sorted({s.subscription_id for s in changes.subscriptions} | changes.gone)
    carried = _carry(
        conn,
        "stripe_subscription_snapshots",
        "subscription_id",
        _columns(stripe_snapshots.SubscriptionSnapshot),
        previous,
        day,
        drop,
        taken_at,
    )
    _append(conn, "stripe_subscription_snapshots", day, changes.subscriptions, (taken_at,))
    snapshot_store.store_customers(conn, day, changes.customers)
    return carried


def _stored_dates(conn: Conn, table: str, day: date | None) -> set[date]:
    if day is None:
        return set()
    row = conn.execute(
        f"SELECT 1 FROM {table} WHERE snapshot_date = %s LIMIT 1",  # noqa: S608
        (day,),
    ).fetchone()
    return {day} if row is not None else set()


def _ids(conn: Conn, sql: str, day: date) -> set[str]:
    return {str(r["id"]) for r in conn.execute(sql, (day,))}


def status_counts(conn: Conn, table: str, day: date) -> dict[str, int]:
    """Rows of one snapshot date by status (the whole snapshot, carried rows included)."""
    rows = conn.execute(
        f"SELECT status, count(*) AS n FROM {table} WHERE snapshot_date = %s "  # noqa: S608
        "GROUP BY status ORDER BY status",
        (day,),
    ).fetchall()
    return {str(r["status"]): int(r["n"]) for r in rows}


# ---- the two passes --------------------------------------------------------------------------


@dataclass(frozen=True)
class PassResult:
    """What a snapshot pass did, for the asset's metadata."""

    record: PassRecord
    invoices: list[stripe_snapshots.InvoiceSnapshot] | None = None
    lines: int = 0
    subscriptions: int = 0
    customers: int = 0


def _plan(
    transaction: Transaction,
    kind: str,
    table: str,
    client: StripeClient,
    today: date,
    wall_now: int,
    test_mode: bool,
    every_days: int,
    force_full: bool,
) -> tuple[PassRecord | None, Frontier, str, str]:
    now = incremental.frontier_now(client, wall_now, test_mode)
    with transaction() as conn:
        last = last_pass(conn, kind)
        stored = _stored_dates(conn, table, last.snapshot_date if last else None)
    mode, reason = choose_pass(last, stored, today, now, every_days, force_full)
    return last, now, mode, reason


def invoice_pass(
    transaction: Transaction,
    client: StripeClient,
    taken_at: datetime,
    wall_now: int,
    *,
    test_mode: bool,
    every_days: int = FULL_PASS_EVERY_DAYS,
    force_full: bool = False,
) -> PassResult:
    """Take the day's invoice snapshot, incrementally when the previous pass allows it."""
    today = taken_at.date()
    last, now, mode, reason = _plan(
        transaction,
        INVOICES,
        "stripe_invoice_snapshots",
        client,
        today,
        wall_now,
        test_mode,
        every_days,
        force_full,
    )
    if mode == "full" or last is None:
        snap = stripe_snapshots.fetch_invoices(client)
        with transaction() as conn:
            snapshot_store.store_invoices(conn, today, snap, taken_at)
            rec = PassRecord(
                INVOICES,
                today,
                "full",
                reason,
                taken_at,
                now,
                today,
                len(snap.invoices),
                0,
                0,
            )
            record_pass(conn, rec)
        return PassResult(rec, snap.invoices, len(snap.lines))
    with transaction() as conn:
        recheck = _ids(
            conn,
            "SELECT invoice_id AS id FROM stripe_invoice_snapshots WHERE snapshot_date = %s "
            "AND status IN ('draft', 'open', 'uncollectible')",
            last.snapshot_date,
        )
    changes = incremental.fetch_invoice_changes(client, last.frontier.since(), recheck)
    with transaction() as conn:
        carried = store_invoice_changes(conn, today, last.snapshot_date, changes, taken_at)
        rec = PassRecord(
            INVOICES,
            today,
            "incremental",
            reason,
            taken_at,
            now,
            last.full_pass_date,
            len(changes.invoices),
            changes.read_by_id,
            carried,
        )
        record_pass(conn, rec)
    return PassResult(rec, changes.invoices, len(changes.lines))


def subscription_pass(
    transaction: Transaction,
    client: StripeClient,
    known_plans: set[str],
    taken_at: datetime,
    wall_now: int,
    *,
    test_mode: bool,
    every_days: int = FULL_PASS_EVERY_DAYS,
    force_full: bool = False,
) -> PassResult:
    """Take the day's customer and subscription snapshot, incrementally when allowed."""
    today = taken_at.date()
    last, now, mode, reason = _plan(
        transaction,
        SUBSCRIPTIONS,
        "stripe_subscription_snapshots",
        client,
        today,
        wall_now,
        test_mode,
        every_days,
        force_full,
    )
    if mode == "full" or last is None:
        state = stripe_snapshots.fetch_state(client, known_plans)
        with transaction() as conn:
            snapshot_store.store_state(conn, today, state, taken_at)
            rec = PassRecord(
                SUBSCRIPTIONS,
                today,
                "full",
                reason,
                taken_at,
                now,
                today,
                len(state.subscriptions),
                0,
                0,
            )
            record_pass(conn, rec)
        return PassResult(rec, None, 0, len(state.subscriptions), len(state.customers))
    with transaction() as conn:
        rows = conn.execute(
            "SELECT subscription_id, status, latest_invoice_status "
            "FROM stripe_subscription_snapshots WHERE snapshot_date = %s",
            (last.snapshot_date,),
        ).fetchall()
    recheck = {
        str(r["subscription_id"])
        for r in rows
        if incremental.subscription_needs_recheck(r["status"], r["latest_invoice_status"])
    }
    changes = incremental.fetch_subscription_changes(
        client, known_plans, last.frontier.since(), recheck
    )
    with transaction() as conn:
        carried = store_subscription_changes(conn, today, last.snapshot_date, changes, taken_at)
        rec = PassRecord(
            SUBSCRIPTIONS,
            today,
            "incremental",
            reason,
            taken_at,
            now,
            last.full_pass_date,
            len(changes.subscriptions),
            changes.read_by_id,
            carried,
        )
        record_pass(conn, rec)
    return PassResult(rec, None, 0, carried + len(changes.subscriptions), len(changes.customers))


def _jsonb(value: Any) -> Any:
    """A JSON parameter for psycopg, imported where a pass writes rather than at load time."""
    from psycopg.types.json import Jsonb

    return Jsonb(value)
