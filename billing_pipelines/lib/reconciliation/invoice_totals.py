"""What the finalized invoices bill, before tax, in tax and in total: finance's three numbers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from billing_pipelines.lib.tables import money

# Invoices that bill the customer: drafts may still change, void ones bill nothing.
BILLED_STATUSES = frozenset({"open", "paid", "uncollectible"})


@dataclass(frozen=True)
class InvoiceTotals:
    """Subtotal (before tax), tax and total (after tax) of a set of invoices, in one currency."""

    currency: str
    invoices: int = 0
    subtotal: int = 0
    tax: int = 0
    total: int = 0

    def describe(self) -> str:
        """One line for reports, e.g. `subtotal $1,000.00, tax $50.00, total $1,050.00`."""
        return (
            f"subtotal {money(self.subtotal, self.currency)}, tax {money(self.tax, self.currency)},"
            f" total {money(self.total, self.currency)}"
        )


def billed_totals(
    invoices: Iterable[tuple[str, str, int | None, int | None, int | None]],
) -> dict[str, InvoiceTotals]:
    """Per currency, the sums over billed invoices of (status, currency, subtotal, tax, total).

    An invoice without a recorded total (snapshotted before taxes were recorded) counts its
    subtotal as its total and no tax.
    """
    out: dict[str, InvoiceTotals] = {}
    for status, currency, subtotal, tax, total in invoices:
        if status not in BILLED_STATUSES:
            continue
        sub, tx = int(subtotal or 0), int(tax or 0)
        whole = int(total) if total is not None else sub + tx
        seen = out.get(currency, InvoiceTotals(currency))
        out[currency] = InvoiceTotals(
            currency,
            seen.invoices + 1,
            seen.subtotal + sub,
            seen.tax + tx,
            seen.total + whole,
        )
    return out
