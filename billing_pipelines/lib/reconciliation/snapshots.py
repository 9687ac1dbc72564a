"""Daily snapshots of Stripe customers, subscriptions and invoices (with lines) in Postgres.

The rows come from `stripe.snapshots` (one dataclass per row, its fields named as the table's
columns); they are stored by snapshot date with an idempotent delete + COPY, so a re-run the
same day replaces that day's snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, fields
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.stripe.snapshots import InvoiceSnapshotSet, StripeSnapshot

if TYPE_CHECKING:
    import psycopg

Conn: TypeAlias = "psycopg.Connection[Any]"


def _copy(
    conn: Conn, table: str, snapshot_date: date, rows: Sequence[Any], extra: tuple[Any, ...]
) -> int:
    """Replace one day's rows of `table` with `rows` (dataclasses) via COPY."""
    # Table names are module constants, never input.
    conn.execute(f"DELETE FROM {table} WHERE snapshot_date = %s", (snapshot_date,))  # noqa: S608
    if not rows:
        return 0
    columns = ["snapshot_date", *(f.name for f in fields(rows[0])), *_EXTRA[: len(extra)]]
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row((snapshot_date, *astuple(row), *extra))
    return len(rows)


_EXTRA = ("taken_at",)


def store_state(conn: Conn, snapshot_date: date, state: StripeSnapshot, taken_at: datetime) -> None:
    """Replace the day's customer and subscription snapshots."""
    _copy(conn, "stripe_customer_snapshots", snapshot_date, state.customers, ())
    _copy(conn, "stripe_subscription_snapshots", snapshot_date, state.subscriptions, (taken_at,))


def store_customers(conn: Conn, snapshot_date: date, customers: Sequence[Any]) -> None:
    """Replace the day's customer snapshot (listed in full by every pass)."""
    _copy(conn, "stripe_customer_snapshots", snapshot_date, customers, ())


def store_invoices(
    conn: Conn, snapshot_date: date, snapshot: InvoiceSnapshotSet, taken_at: datetime
) -> None:
    """Replace the day's invoice and invoice line snapshots."""
    _copy(conn, "stripe_invoice_snapshots", snapshot_date, snapshot.invoices, (taken_at,))
    _copy(conn, "stripe_invoice_line_snapshots", snapshot_date, snapshot.lines, ())
