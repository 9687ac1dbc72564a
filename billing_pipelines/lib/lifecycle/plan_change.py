"""How a plan change bills usage and included queries: one rule for preview, invoice and email.

Stripe bills a metered price replaced mid-period in two parts (flexible billing mode): the
usage before the change at the old price, on its own line dated [period start, change), and the
usage from the change at the new price, dated [change, period end). Each part is priced by its
own graduated tiers, so each part has its own plan's included queries. We keep that rule: usage
is priced by the plan in force when the query ran, and the free allowance is the plan's, per
part (a change of plan starts the new plan's allowance). The preview, the change's email and
the invoices all state it with the same sentence, `included_queries_note`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.notifications.emails import format_money
from billing_pipelines.lib.stripe.lifecycle import PreviewLine


@dataclass(frozen=True)
class UsageBeforeChange:
    """The old plan's part of the period: its usage line as Stripe priced it."""

    queries: int
    amount: int
    period_start: int
    period_end: int


def usage_before_change(
    lines: Sequence[PreviewLine], old_usage_price: str
) -> UsageBeforeChange | None:
    """The line that bills the old plan's usage, if the change has one (a trial has none)."""
    for line in lines:
        if line.price_id == old_usage_price:
            return UsageBeforeChange(
                queries=int(line.quantity or 0),
                amount=line.amount,
                period_start=line.period_start,
                period_end=line.period_end,
            )
    return None


def included_queries_note(
    from_plan: Plan, to_plan: Plan, before: UsageBeforeChange | None, currency: str
) -> str:
    """The plan-change rule for included queries in plain words, with the old part's numbers."""
    so_far = ""
    if before is not None:
        so_far = f" ({before.queries:,} queries so far: {format_money(before.amount, currency)})"
    return (
        f"Queries before the change are billed on {from_plan.name} with its "
        f"{from_plan.included_queries:,} included queries{so_far}; queries from the change to "
        f"the end of the period are billed on {to_plan.name} with its own "
        f"{to_plan.included_queries:,} included queries."
    )
