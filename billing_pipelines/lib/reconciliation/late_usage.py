"""Late usage: queries that reached the warehouse after their period's invoice was final.

The usage audit compares each final invoice line with the distinct queries whose timestamps
are in its period. A shortfall (usage that arrived late, or a boundary part that could not be
reported in time) is billed on the customer's next invoice as a correction line naming the
period and why, priced by that line's plan at the marginal price (the tiers continue from the
quantity already billed), recorded here before Stripe is called (never twice, never dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.reconciliation.usage_audit import BilledLine, line_cents

if TYPE_CHECKING:
    import psycopg

Conn: TypeAlias = "psycopg.Connection[Any]"
LineKey = tuple[str, str]  # (invoice id, line id)

PENDING, CREATED = "pending", "created"


@dataclass(frozen=True)
class Correction:
    """One correction of one invoice line: the late queries and what they cost."""

    invoice_id: str
    line_id: str
    tenant_id: str
    customer_id: str
    plan: str
    currency: str
    period_start: datetime
    period_end: datetime
    truth_queries: int  # the line's truth this correction brings it to
    queries: int  # late queries billed by this correction
    amount: int  # cents

    @property
    def key(self) -> str:
        """Idempotency key and Stripe metadata: one item per line and truth, ever."""
        return f"late-usage-{self.invoice_id}-{self.line_id}-{self.truth_queries}"

    @property
    def description(self) -> str:
        """The correction line's text on the invoice: which period, how much, and why."""
        return (
            f"Late usage for {self.period_start:%Y-%m-%d}..{self.period_end:%Y-%m-%d}: "
            f"{self.queries:,} queries (reported after that period's invoice was final; "
            f"priced on the {self.plan} plan, continuing its tiers)"
        )


def marginal_cents(plan: Plan, billed: int, late: int) -> int:
    """What `late` more queries cost on the plan's graduated tiers after `billed` queries."""
    return line_cents(plan, billed + late) - line_cents(plan, billed)


def correction_for(line: BilledLine, truth: int, corrected: int, plan: Plan) -> Correction | None:
    """The correction a final line needs: truth above what the line and earlier corrections
    billed (None when nothing is missing; an over-charge is not corrected here)."""
    billed = line.quantity + corrected
    late = truth - billed
    if late <= 0 or line.tenant_id is None:
        return None
    return Correction(
        invoice_id=line.invoice_id,
        line_id=line.line_id,
        tenant_id=line.tenant_id,
        customer_id=line.customer_id,
        plan=plan.key,
        currency=line.currency,
        period_start=line.period_start,
        period_end=line.period_end,
        truth_queries=truth,
        queries=late,
        amount=marginal_cents(plan, billed, late),
    )


def corrected(conn: Conn, keys: Iterable[LineKey]) -> dict[LineKey, tuple[int, int]]:
    """Per invoice line, the queries and cents its corrections billed (pending ones included:
    they are billed once their item is created)."""
    pairs = list(set(keys))
    if not pairs:
        return {}
    rows = conn.execute(
        """
        SELECT invoice_id, line_id, sum(queries) AS queries, sum(amount) AS amount
        FROM late_usage_corrections
        WHERE (invoice_id, line_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
        GROUP BY invoice_id, line_id
        """,
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    ).fetchall()
    return {(r["invoice_id"], r["line_id"]): (int(r["queries"]), int(r["amount"])) for r in rows}


def record_pending(conn: Conn, correction: Correction) -> bool:
    """Write the correction before any call to Stripe; False if it already exists."""
    row = conn.execute(
        """
        INSERT INTO late_usage_corrections (invoice_id, line_id, truth_queries, tenant_id,
            customer_id, plan, period_start, period_end, queries, amount, currency,
            description, status)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending')
        ON CONFLICT DO NOTHING
        RETURNING invoice_id
        """,
        (
            correction.invoice_id,
            correction.line_id,
            correction.truth_queries,
            correction.tenant_id,
            correction.customer_id,
            correction.plan,
            correction.period_start,
            correction.period_end,
            correction.queries,
            correction.amount,
            correction.currency,
            correction.description,
        ),
    ).fetchone()
    return row is not None


def pending(conn: Conn) -> list[Correction]:
    """Corrections written but not yet confirmed by Stripe (a crash between the two)."""
    rows = conn.execute(
        "SELECT * FROM late_usage_corrections WHERE status = 'pending' ORDER BY created_at"
    ).fetchall()
    return [
        Correction(
            invoice_id=r["invoice_id"],
            line_id=r["line_id"],
            tenant_id=r["tenant_id"],
            customer_id=r["customer_id"],
            plan=r["plan"],
            currency=r["currency"],
            period_start=r["period_start"],
            period_end=r["period_end"],
            truth_queries=int(r["truth_queries"]),
            queries=int(r["queries"]),
            amount=int(r["amount"]),
        )
        for r in rows
    ]


def record_created(conn: Conn, correction: Correction, item_id: str) -> None:
    """Confirm a correction once Stripe holds its invoice item."""
    conn.execute(
        """
        UPDATE late_usage_corrections
        SET status = 'created', invoice_item_id = %s, updated_at = now()
        WHERE invoice_id = %s AND line_id = %s AND truth_queries = %s
        """,
        (item_id, correction.invoice_id, correction.line_id, correction.truth_queries),
    )


def with_corrections(
    lines: Iterable[BilledLine], done: Mapping[LineKey, tuple[int, int]]
) -> list[BilledLine]:
    """Each line as billed in the end: its own quantity and amount plus its corrections."""
    from dataclasses import replace

    out = []
    for line in lines:
        queries, cents = done.get((line.invoice_id, line.line_id), (0, 0))
        out.append(
            replace(line, quantity=line.quantity + queries, amount=line.amount + cents)
            if queries or cents
            else line
        )
    return out


def shortfalls(conn: Conn, plans: Mapping[str, Plan]) -> list[Correction]:
    """The corrections the newest usage audit calls for: final lines whose truth by event
    timestamps is above what they (and their corrections, even those made since that audit)
    billed, priced by each line's own plan."""
    rows = conn.execute(
        """
        SELECT a.invoice_id, a.line_id, a.tenant_id, a.customer_id, a.plan, a.period_start,
               a.period_end, a.warehouse_queries, a.invoice_quantity, a.invoice_amount,
               i.currency,
               (SELECT max(c.truth_queries) FROM late_usage_corrections c
                WHERE c.invoice_id = a.invoice_id AND c.line_id = a.line_id) AS corrected_to
        FROM usage_invoice_audit a
        JOIN stripe_invoice_snapshots i
          ON i.snapshot_date = a.audit_date AND i.invoice_id = a.invoice_id
        WHERE a.audit_date = (SELECT max(audit_date) FROM usage_invoice_audit)
          AND a.warehouse_queries > a.invoice_quantity
          AND a.tenant_id IS NOT NULL AND a.plan IS NOT NULL
        ORDER BY a.tenant_id, a.period_start, a.invoice_id, a.line_id
        """
    ).fetchall()
    out = []
    for r in rows:
        plan = plans.get(r["plan"])
        if plan is None:
            continue
        # The audit's quantity includes the corrections made before it; one made since
        # brought the line to its truth already.
        billed = max(int(r["invoice_quantity"]), int(r["corrected_to"] or 0))
        line = BilledLine(
            invoice_id=r["invoice_id"],
            line_id=r["line_id"],
            customer_id=r["customer_id"],
            tenant_id=r["tenant_id"],
            plan=plan,
            currency=r["currency"],
            period_start=r["period_start"],
            period_end=r["period_end"],
            quantity=billed,
            amount=int(r["invoice_amount"]),
            meter_id=None,
        )
        found = correction_for(line, int(r["warehouse_queries"]), 0, plan)
        if found is not None:
            out.append(found)
    return out
