"""The usage audit as one table for the data team: per tenant and period, every source side by
side, the money, the verdict and the invoice it is about.

Built from the audit's rows (`usage_audit.AuditRow`) plus what the invoice snapshot says about
each invoice (number, total, status), so how the audit computes truth and how it is shown can
change independently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.reconciliation.usage_audit import AuditRow
from billing_pipelines.lib.tables import Column, Table, count, money

if TYPE_CHECKING:
    import psycopg

Conn: TypeAlias = "psycopg.Connection[Any]"

COLUMNS = [
    Column("tenant_id", "The tenant billed (empty: the Stripe customer has no tenant)."),
    Column("period_start", "Start of the billing period (UTC)."),
    Column("period_end", "End of the billing period (UTC, exclusive)."),
    Column("plan", "The plan Stripe billed the period on."),
    Column("warehouse", "Distinct billable queries in the warehouse's usage_events."),
    Column("daily_usage", "Billable queries stored in daily_tenant_usage."),
    Column("ledger", "Queries the meter report ledger delivered to Stripe."),
    Column("stripe_meter", "Queries in Stripe's meter summaries for the period."),
    Column("invoice_quantity", "Queries on the invoice's usage line."),
    Column("included", "Queries included in the plan."),
    Column("over", "Invoiced queries above the included ones (what the overage bills)."),
    Column("invoiced", "The usage line's amount on the invoice."),
    Column("recomputed", "What the warehouse truth costs under the catalog's tiers."),
    Column("difference", "Invoiced minus recomputed: positive is over-charged."),
    Column("status", "ok, over-charged, under-charged, or sources differ."),
    Column("invoice_number", "The invoice's number as the customer sees it."),
    Column("invoice_total", "The invoice's total: every line, base fee and tax included."),
    Column("line_tax", "Tax on the usage line (Stripe Tax); invoiced is before it."),
    Column("invoice_tax", "Tax on the whole invoice (Stripe's total_taxes)."),
    Column("invoice_status", "The invoice's Stripe status (open, paid, uncollectible)."),
    Column("invoice_id", "Stripe's invoice id (billing explain --invoice takes it)."),
    Column("causes", "Every difference between the sources, in plain words."),
    Column("explanation", "The usage line in words support can paste to the customer."),
]


@dataclass(frozen=True)
class InvoiceSummary:
    """What the snapshot says about one invoice as a whole."""

    number: str | None
    status: str
    total_cents: int
    currency: str
    tax_cents: int = 0


def status(row: AuditRow) -> str:
    """One word for the row: what the data team looks at first."""
    if row.difference_cents > 0:
        return "over-charged"
    if row.difference_cents < 0:
        return "under-charged"
    return "ok" if row.clean else "sources differ"


def _instant(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def audit_lines_table(rows: Iterable[AuditRow], invoices: Mapping[str, InvoiceSummary]) -> Table:
    """Every audited tenant and period, tenants in order, periods oldest first; no cap."""
    table = Table(list(COLUMNS))
    ordered = sorted(
        rows,
        key=lambda r: (r.line.tenant_id or "", r.line.period_start, r.line.invoice_id),
    )
    for row in ordered:
        line = row.line
        currency = line.currency
        invoice = invoices.get(line.invoice_id)
        included = line.plan.included_queries if line.plan else None
        table.add(
            tenant_id=line.tenant_id or "",
            period_start=_instant(line.period_start),
            period_end=_instant(line.period_end),
            plan=line.plan.name if line.plan else "unknown",
            warehouse=count(row.warehouse),
            daily_usage=count(row.daily_usage),
            ledger=count(row.ledger),
            stripe_meter=count(row.stripe),
            invoice_quantity=count(line.quantity),
            included=count(included),
            over=count(None if included is None else max(0, line.quantity - included)),
            invoiced=money(line.amount, currency),
            recomputed=money(row.recomputed_amount, currency),
            difference=money(row.difference_cents, currency),
            status=status(row),
            invoice_number=(invoice.number or "") if invoice else "",
            invoice_total=money(invoice.total_cents, invoice.currency) if invoice else "",
            line_tax=money(row.line.tax, currency),
            invoice_tax=money(invoice.tax_cents, invoice.currency) if invoice else "",
            invoice_status=invoice.status if invoice else "",
            invoice_id=line.invoice_id,
            causes="; ".join(row.causes),
            explanation=row.explanation,
        )
    return table


def invoice_summaries(
    conn: Conn, snapshot_date: date, invoice_ids: Iterable[str]
) -> dict[str, InvoiceSummary]:
    """Number, status, total and tax of each invoice in the snapshot (the total is the sum of
    its lines plus its tax)."""
    rows = conn.execute(
        """
        SELECT i.invoice_id, i.number, i.status, i.currency,
               coalesce(sum(l.amount), 0) + coalesce(i.tax, 0) AS total,
               coalesce(i.tax, 0) AS tax
        FROM stripe_invoice_snapshots i
        LEFT JOIN stripe_invoice_line_snapshots l
          ON l.snapshot_date = i.snapshot_date AND l.invoice_id = i.invoice_id
        WHERE i.snapshot_date = %s AND i.invoice_id = ANY(%s)
        GROUP BY i.invoice_id, i.number, i.status, i.currency, i.tax
        """,
        (snapshot_date, sorted(set(invoice_ids))),
    ).fetchall()
    return {
        r["invoice_id"]: InvoiceSummary(
            number=r["number"],
            status=r["status"],
            total_cents=int(r["total"]),
            currency=r["currency"],
            tax_cents=int(r["tax"]),
        )
        for r in rows
    }
