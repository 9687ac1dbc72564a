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

from billing_pipelines.lib.catalog.plans import Catalog, Plan
from billing_pipelines.lib.notifications.emails import format_day, format_money, usage_explanation
from billing_pipelines.lib.stripe.catalog import usage_lookup_key
from billing_pipelines.lib.stripe.lifecycle import PreviewLine
from billing_pipelines.lib.stripe.reads import InvoiceLine


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


def cycle_change_note(plan: Plan, to_cycle: str) -> str:
    """A billing-cycle change on the same plan: only the base fee moves; usage is untouched."""
    return (
        f"Only the base fee moves to {to_cycle} billing; queries are still measured and billed "
        f"every month on {plan.name} with its {plan.included_queries:,} included queries."
    )


def explain_invoice_usage(
    catalog: Catalog, fallback: Plan | None, lines: Sequence[InvoiceLine], currency: str
) -> str | None:
    """An invoice's usage in plain words: one sentence per metered line, by that line's plan.

    A plan change leaves two usage lines on one invoice (old price, new price); each is
    explained with its own plan's included queries, as it was billed. Lines whose price is not
    in the catalog fall back to the tenant's current plan.
    """
    by_key = {
        usage_lookup_key(plan, meter): plan
        for plan in catalog.plans.values()
        for meter in catalog.meters.values()
    }
    parts = []
    for line in lines:
        plan = by_key.get(line.lookup_key or "") or fallback
        if line.metered and plan is not None:
            parts.append((plan, line))
    if not parts:
        return None
    if len(parts) == 1:
        plan, line = parts[0]
        return usage_explanation(plan, int(line.quantity or 0), currency)
    return " ".join(
        f"{plan.name}, {format_day(line.period_start)} to {format_day(line.period_end)}: "
        f"{usage_explanation(plan, int(line.quantity or 0), currency).rstrip('.')}."
        for plan, line in parts
    )
