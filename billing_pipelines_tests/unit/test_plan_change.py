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
