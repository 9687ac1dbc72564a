"""The plan-change rule for included queries: which line is the old plan's part, and its words."""

from __future__ import annotations

from decimal import Decimal

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.lifecycle import plan_change
from billing_pipelines.lib.stripe.lifecycle import PreviewLine

STARTER = Plan("starter", "Starter", 2900, 10_000, Decimal("0.1"))
ENTERPRISE = Plan("enterprise", "Enterprise", 49900, 1_000_000, Decimal("0.05"))


def _line(price: str | None, quantity: int | None, amount: int) -> PreviewLine:
    return PreviewLine("x", amount, price, quantity, 1_769_869_800, 1_770_751_800)


def test_the_old_plans_usage_line_is_found_by_its_price() -> None:
    lines = [
        _line("price_base_new", 1, 31_000),
        _line("price_usage_old", 42_000, 3200),
        _line("price_usage_new", 0, 0),
    ]
    before = plan_change.usage_before_change(lines, "price_usage_old")
    assert before == plan_change.UsageBeforeChange(42_000, 3200, 1_769_869_800, 1_770_751_800)
    assert plan_change.usage_before_change(lines, "price_usage_missing") is None


def test_the_note_states_each_plans_own_allowance() -> None:
    before = plan_change.UsageBeforeChange(42_000, 3200, 0, 1)
    assert plan_change.included_queries_note(STARTER, ENTERPRISE, before, "usd") == (
        "Queries before the change are billed on Starter with its 10,000 included queries "
        "(42,000 queries so far: $32.00); queries from the change to the end of the period are "
        "billed on Enterprise with its own 1,000,000 included queries."
    )
    downgrade = plan_change.included_queries_note(ENTERPRISE, STARTER, None, "eur")
    assert downgrade.startswith("Queries before the change are billed on Enterprise with its ")
    assert "so far" not in downgrade and downgrade.endswith("its own 10,000 included queries.")


def test_an_invoice_with_two_plans_usage_explains_each_part_by_its_plan() -> None:
    from datetime import UTC, datetime

    from billing_pipelines.lib.catalog.plans import load_catalog
    from billing_pipelines.lib.stripe.reads import InvoiceLine

    catalog = load_catalog()
    mar15 = datetime(2026, 3, 15, 9, 45, tzinfo=UTC)
    apr4 = datetime(2026, 4, 4, 14, 45, tzinfo=UTC)
    apr15 = datetime(2026, 4, 15, 9, 45, tzinfo=UTC)
    lines = [
        InvoiceLine("p1", 1, 2900, False, "starter_base_monthly", apr15, apr15),
        InvoiceLine("p2", 140_000, 3200, True, "pro_queries_overage_monthly", mar15, apr4),
        InvoiceLine("p3", 12_500, 250, True, "starter_queries_overage_monthly", apr4, apr15),
    ]
    text = plan_change.explain_invoice_usage(catalog, catalog.plan("starter"), lines, "usd")
    assert text == (
        "Pro, March 15, 2026 to April 4, 2026: You used 140,000 queries: 40,000 over the "
        "100,000 included = $32.00. "
        "Starter, April 4, 2026 to April 15, 2026: You used 12,500 queries: 2,500 over the "
        "10,000 included = $2.50."
    )
    single = plan_change.explain_invoice_usage(catalog, catalog.plan("pro"), lines[2:], "usd")
    assert single == "You used 12,500 queries: 2,500 over the 10,000 included = $2.50"
    assert plan_change.explain_invoice_usage(catalog, None, lines[:1], "usd") is None
