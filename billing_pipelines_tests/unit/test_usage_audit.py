"""The usage-vs-invoice audit as pure logic: period days, causes, money, explanations."""

from __future__ import annotations

from datetime import UTC, date, datetime

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.reconciliation.usage_audit import (
    BilledLine,
    DaySources,
    audit_line,
    line_cents,
    period_days,
)

PRO = load_catalog().plans["pro"]
START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def line(quantity: int, amount: int) -> BilledLine:
    return BilledLine(
        "in_1", "il_1", "cus_1", "t1", PRO, "usd", START, END, quantity, amount, "mtr_1"
    )


def test_period_days_are_the_midnights_inside_the_period() -> None:
    days = period_days(START, END)
    assert days[0] == date(2026, 11, 1) and days[-1] == date(2026, 11, 30) and len(days) == 30
    mid = datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert period_days(mid, datetime(2026, 11, 3, 10, tzinfo=UTC)) == [
        date(2026, 11, 2),
        date(2026, 11, 3),
    ]


def test_line_cents_follow_the_graduated_tiers_rounded_half_up() -> None:
    assert line_cents(PRO, 100_000) == 0
    assert line_cents(PRO, 125_000) == 2000
    assert line_cents(PRO, 100_006) == 0  # 0.48 cents rounds down
    assert line_cents(PRO, 100_007) == 1  # 0.56 cents rounds up


def test_all_sources_agreeing_is_a_zero_difference_with_an_explanation() -> None:
    same = DaySources(125_000, 125_000, 125_000, 125_000)
    row = audit_line(line(125_000, 2000), {date(2026, 11, 5): same})
    assert row.clean and row.difference_cents == 0 and row.recomputed_amount == 2000
    assert row.explanation == (
        "For 2026-11-01 to 2026-11-30 (UTC): You used 125,000 queries: 25,000 over the "
        "100,000 included = $20.00."
    )


def test_double_count_names_the_day_the_cause_and_the_money() -> None:
    days = {
        date(2026, 11, 5): DaySources(125_000, 125_000, 125_000, 125_000),
        date(2026, 11, 6): DaySources(0, 0, 125_000, 125_000),
    }
    row = audit_line(line(250_000, 12_000), days)
    assert not row.clean and row.difference_cents == 10_000
    text = " | ".join(row.causes)
    assert "2026-11-06: the report ledger delivered 125,000 queries" in text
    assert "double count" in text
    assert "over-charged by $100.00" in text


def test_each_source_gap_has_its_own_cause() -> None:
    stale = {date(2026, 11, 5): DaySources(warehouse=130, daily_usage=120, ledger=120, stripe=120)}
    row = audit_line(line(120, 0), stale)
    assert any("daily_tenant_usage holds 120" in c for c in row.causes)
    lost = {date(2026, 11, 5): DaySources(130, 130, 130, 100)}
    row = audit_line(line(100, 0), lost)
    assert any("Stripe's meter holds 100" in c for c in row.causes)
    late = {date(2026, 11, 5): DaySources(130, 130, 130, 130)}
    row = audit_line(line(100, 0), late)
    assert any("after the invoice finalized" in c for c in row.causes)
    mispriced = {date(2026, 11, 5): DaySources(125_000, 125_000, 125_000, 125_000)}
    row = audit_line(line(125_000, 2500), mispriced)
    assert any("catalog tiers say $20.00" in c for c in row.causes)
    assert row.difference_cents == 500
