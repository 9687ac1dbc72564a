"""Late usage corrections: marginal price on the period's plan, what a line still lacks, and
the line as finally billed (worked out by hand from plans.toml: starter 10,000 free then
0.1 cent a query; pro 100,000 free then 0.08 cent)."""

from __future__ import annotations

from datetime import UTC, datetime

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.reconciliation.late_usage import (
    correction_for,
    marginal_cents,
    with_corrections,
)
from billing_pipelines.lib.reconciliation.usage_audit import BilledLine

PLANS = load_catalog().plans


def _line(quantity: int, amount: int, plan: str = "starter") -> BilledLine:
    return BilledLine(
        invoice_id="in_1",
        line_id="il_1",
        customer_id="cus_1",
        tenant_id="t1",
        plan=PLANS[plan],
        currency="usd",
        period_start=datetime(2026, 10, 1, 14, 30, tzinfo=UTC),
        period_end=datetime(2026, 11, 1, 14, 30, tzinfo=UTC),
        quantity=quantity,
        amount=amount,
        meter_id=None,
    )


def test_late_queries_continue_the_tiers_from_what_was_billed() -> None:
    starter, pro = PLANS["starter"], PLANS["pro"]
    assert marginal_cents(starter, 9_000, 3_000) == 200  # 1,000 still free, 2,000 x 0.1 cent
    assert marginal_cents(starter, 12_000, 1_234) == 123  # 123.4 cents: all past the free tier
    assert marginal_cents(starter, 0, 10_000) == 0
    assert marginal_cents(pro, 100_000, 5_000) == 400  # 5,000 x 0.08 cent
    # Rounded totals, not rounded parts: the corrected line costs what its truth costs.
    assert marginal_cents(starter, 10_001, 1) + marginal_cents(starter, 10_000, 1) == 0


def test_a_line_is_corrected_up_to_its_truth_once() -> None:
    line = _line(9_000, 0)
    found = correction_for(line, 12_000, 0, PLANS["starter"])
    assert found is not None
    assert (found.queries, found.amount, found.truth_queries) == (3_000, 200, 12_000)
    assert found.key == "late-usage-in_1-il_1-12000"
    assert found.description == (
        "Late usage for 2026-10-01..2026-11-01: 3,000 queries (reported after that period's "
        "invoice was final; priced on the starter plan, continuing its tiers)"
    )
    # Already corrected to its truth: nothing more. More late usage later: only the new part.
    assert correction_for(line, 12_000, 3_000, PLANS["starter"]) is None
    later = correction_for(line, 12_500, 3_000, PLANS["starter"])
    assert later is not None and (later.queries, later.amount) == (500, 50)
    # An over-charge is not a correction's business.
    assert correction_for(line, 8_000, 0, PLANS["starter"]) is None


def test_the_audit_sees_the_line_with_its_corrections() -> None:
    line = _line(9_000, 0)
    other = BilledLine(**{**line.__dict__, "line_id": "il_2"})
    fixed = with_corrections([line, other], {("in_1", "il_1"): (3_000, 200)})
    assert [(ln.quantity, ln.amount) for ln in fixed] == [(12_000, 200), (9_000, 0)]
