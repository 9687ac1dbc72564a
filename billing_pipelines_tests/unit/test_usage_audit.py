"""The usage-vs-invoice audit as pure logic: period days, causes, money, explanations."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.reconciliation.usage_audit import (
    BilledLine,
    DaySources,
    audit_line,
    line_cents,
    period_days,
    priced_by_line,
)
from billing_pipelines.lib.usage.periods import PeriodTruth

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


def _truth(start: datetime, end: datetime, queries: int, head: int, tail: int) -> PeriodTruth:
    return PeriodTruth(start, end, queries, head, tail, head_before=7, tail_after=9)


def test_truth_by_timestamps_replaces_whole_days_and_names_both_boundary_days() -> None:
    # A period from Jan 31 09:15:30 to the last day of February at 09:15:30 (a month-end anchor).
    start = datetime(2027, 1, 31, 9, 15, 30, tzinfo=UTC)
    end = datetime(2027, 2, 28, 9, 15, 30, tzinfo=UTC)
    billed = BilledLine("in_2", "il_2", "cus_1", "t1", PRO, "usd", start, end, 100_500, 40, None)
    whole = {date(2027, 2, 1): DaySources(100_500, 100_500, 100_500, 100_500)}
    row = audit_line(billed, whole, _truth(start, end, 101_000, head=200, tail=300))
    assert row.warehouse == 101_000 and row.truth_method.startswith("distinct query ids")
    assert row.recomputed_amount == 80  # 1,000 over 100,000 at $0.0008
    assert row.difference_cents == 40 - 80
    text = " | ".join(row.causes)
    assert "the period starts at 2027-01-31 09:15:30 UTC" in text
    assert "200 queries of that day after the start belong to this period" in text
    assert "7 before it to the previous one" in text
    assert "boundary day 2027-02-28: the period ends at 2027-02-28 09:15:30 UTC" in text
    assert "300 queries of that day before the end" in text and "9 after it" in text
    # The same line by whole days alone looks exact: the blind spot the truth closes.
    assert audit_line(billed, whole).clean


def test_midnight_periods_name_no_boundary_day() -> None:
    row = audit_line(line(125_000, 2000), {}, _truth(START, END, 125_001, head=0, tail=0))
    assert not any("boundary day" in c for c in row.causes)
    assert any("125,001 distinct queries with timestamps in the period" in c for c in row.causes)


def test_each_line_is_priced_by_its_own_price_after_a_plan_change() -> None:
    plans = load_catalog().plans
    old = replace(line(120_000, 1600), price_id="price_pro_usage", line_id="il_old")
    new = replace(line(150_000, 0), price_id="price_ent_usage", line_id="il_new")
    other = replace(line(5, 0), price_id="price_unknown", line_id="il_other")
    priced = priced_by_line(
        [old, new, other], plans, {"price_pro_usage": "pro", "price_ent_usage": "enterprise"}
    )
    assert [p.plan.key if p.plan else None for p in priced] == ["pro", "enterprise", "pro"]
    # Enterprise includes 1,000,000: its 150,000 cost nothing; checked against the
    # subscription's plan (pro) the same line would look under-charged by $40.00.
    same = {date(2026, 11, 5): DaySources(150_000, 150_000, 150_000, 150_000)}
    assert audit_line(priced[1], same).clean
    assert audit_line(new, same).difference_cents == -4000
