"""Bill late usage: each correction the audit calls for becomes one pending invoice item.

The correction row is committed (pending) before Stripe is called and confirmed after; a
crash in between leaves it pending, and the next run finds the item by its key on the customer
(or creates it with the same idempotency key), so a correction is billed exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.reconciliation import late_usage
from billing_pipelines.lib.reconciliation.late_usage import Conn, Correction
from billing_pipelines.lib.stripe import corrections as stripe_corrections

if TYPE_CHECKING:
    from billing_pipelines.lib.stripe.client import StripeClient

Transaction = Callable[[], AbstractContextManager[Conn]]


@dataclass
class LateBillingResult:
    """What a run billed: the corrections now on their customers' next invoices."""

    created: list[tuple[Correction, str]] = field(default_factory=list)  # (correction, item id)
    already_billed: int = 0  # shortfalls an earlier run had corrected

    @property
    def cents(self) -> int:
        """The run's corrections, in cents."""
        return sum(c.amount for c, _ in self.created)


def bill_late_usage(
    transaction: Transaction, client: StripeClient, plans: Mapping[str, Plan]
) -> LateBillingResult:
    """Record every correction the newest audit calls for, then put each on its customer."""
    result = LateBillingResult()
    with transaction() as conn:
        for correction in late_usage.shortfalls(conn, plans):
            if not late_usage.record_pending(conn, correction):
                result.already_billed += 1
    with transaction() as conn:
        todo = late_usage.pending(conn)
    for correction in todo:
        item_id = stripe_corrections.find_item(client, correction.customer_id, correction.key)
        if item_id is None:
            item_id = stripe_corrections.create_item(
                client,
                customer_id=correction.customer_id,
                amount=correction.amount,
                currency=correction.currency,
                description=correction.description,
                period=(
                    int(correction.period_start.timestamp()),
                    int(correction.period_end.timestamp()),
                ),
                key=correction.key,
                metadata={"tenant_id": correction.tenant_id, "kind": "late_usage"},
            )
        with transaction() as conn:
            late_usage.record_created(conn, correction, item_id)
        result.created.append((correction, item_id))
    return result
