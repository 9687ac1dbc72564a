"""The usage audit's money and verdicts, pinned exactly: rounding computed with fractions (not
Decimal quantize), every cause's wording in a non-dollar currency, audit_lines reading each
day's sources, and one unreadable line never hiding the others."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.reconciliation.usage_audit import (
    AuditRow,
    BilledLine,
    DaySources,
    audit_line,
    audit_lines,
    explain_line,
    line_cents,
)
from billing_pipelines.lib.usage.periods import PeriodTruth

# 0.05 cents a query above 10: every 10 queries over is exactly half a cent more.
HALF = Plan("half", "Half", 0, 10, Decimal("0.05"))
START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def half_up(queries: int, plan: Plan) -> int:
    """Cents by fractions: the exact charge plus one half, rounded down."""
    exact = Fraction(max(0, queries - plan.included_queries)) * Fraction(
        str(plan.overage_cents_per_query)
    )
    return math.floor(exact + Fraction(1, 2))


@pytest.mark.parametrize("queries", [*range(0, 120), 1_000_005, 1_000_015, 999_999])
def test_line_cents_round_every_half_cent_up(queries: int) -> None:
    assert line_cents(HALF, queries) == half_up(queries, HALF)


def test_half_cents_round_up_not_to_even() -> None:
    # 10, 30 and 50 queries over: 0.5, 1.5 and 2.5 cents (banker's rounding gives 0, 2, 2).
    assert [line_cents(HALF, 10 + n) for n in (10, 30, 50)] == [1, 2, 3]


def line(quantity: int, amount: int, **kw: object) -> BilledLine:
    base: dict[str, object] = dict(
        invoice_id="in_1",
        line_id="il_1",
        customer_id="cus_1",
        tenant_id="t1",
        plan=HALF,
        currency="eur",
        period_start=START,
        period_end=END,
        quantity=quantity,
        amount=amount,
        meter_id="mtr_1",
    )
    base.update(kw)
    return BilledLine(**base)  # type: ignore[arg-type]


def test_each_cause_is_worded_exactly_in_the_line_currency() -> None:
    day = date(2026, 11, 5)
    row = audit_line(
        line(130, 2),
        {day: DaySources(warehouse=130, daily_usage=120, ledger=110, stripe=100)},
    )
    assert row.causes[:3] == [
        "2026-11-05: daily_tenant_usage holds 120 queries, the warehouse 130 "
        "(partition stale or not materialized: late events?)",
        "2026-11-05: the report ledger delivered 110 queries, daily usage is 120 "
        "(usage not reported to Stripe)",
        "2026-11-05: Stripe's meter holds 100 queries, the ledger 110 "
        "(meter events sent outside the ledger, or lost)",
    ]
    assert row.causes[3] == (
        "the invoice bills 130 queries, Stripe's meter totals for the period are 100 "
        "(usage arrived after the invoice finalized?)"
    )
    # 120 over at 0.05 = 6 cents charged 2: a wrong price, and under-charged by 4 cents.
    assert row.causes[4] == (
        "the invoice charges €0.02 for 130 queries, the catalog tiers say €0.06 "
        "(Stripe price differs from plans.toml)"
    )
    assert row.causes[5] == (
        "under-charged by €0.04: billed €0.02 for 130 queries, the warehouse truth of "
        "130 queries costs €0.06"
    )
    assert (row.warehouse, row.daily_usage, row.ledger, row.stripe) == (130, 120, 110, 100)
    assert row.recomputed_amount == 6 and row.difference_cents == -4 and not row.clean
    assert row.truth_method == "whole UTC days whose midnight is in the period"


def test_a_one_cent_over_charge_is_over_charged_and_a_double_count_is_named() -> None:
    day = date(2026, 11, 5)
    row = audit_line(line(30, 2), {day: DaySources(30, 20, 30, 30)})
    assert "(reported usage the warehouse does not have: double count)" in row.causes[1]
    # The warehouse's 30 queries cost 1 cent (0.05 x 20 = 1.0): billed 2, one cent over.
    assert row.difference_cents == 1
    assert row.causes[-1].startswith("over-charged by €0.01: billed €0.02")


@pytest.mark.parametrize(
    "causes,difference,clean",
    [([], 0, True), ([], 1, False), ([], -1, False), (["x"], 0, False), (["x"], 5, False)],
)
def test_only_no_cause_and_no_money_difference_is_clean(
    causes: list[str], difference: int, clean: bool
) -> None:
    row = AuditRow(line(0, 0), 0, 0, 0, 0, 0, difference, causes)
    assert row.clean is clean


def test_a_period_cut_inside_a_day_at_one_end_only_is_checked_against_the_truth() -> None:
    end = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)
    truth = PeriodTruth(START, end, 130, 0, 40, head_before=0, tail_after=3)
    billed = line(130, 6, period_end=end)
    # The whole-day sources show less (the cut day is not among them): no whole-day cause.
    row = audit_line(billed, {date(2026, 11, 5): DaySources(90, 90, 90, 90)}, truth)
    assert row.clean, row.causes
    assert row.truth_method == truth.method


def test_unknown_tenant_or_plan_is_reported_on_its_line() -> None:
    row = audit_line(line(50, 7, tenant_id=None, plan=None), {})
    assert row.causes[-1] == "tenant or plan unknown: the amount cannot be recomputed"
    assert row.recomputed_amount == 7 and row.difference_cents == 0 and not row.clean
    assert (
        explain_line(row.line) == "For 2026-11-01 to 2026-11-30 (UTC) we billed 50 queries, €0.07."
    )


def test_the_explanation_names_the_period_in_the_line_currency() -> None:
    billed = line(30, 1, period_end=datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    text = explain_line(billed)
    assert text.startswith("For 2026-11-01 to 2026-12-01 (UTC): ")
    assert "€" in text and not text.endswith("..")


def test_audit_lines_reads_each_day_of_each_line_and_its_truth() -> None:
    split_end = datetime(2026, 11, 3, 15, 0, tzinfo=UTC)
    lines = [
        line(9, 0, tenant_id="t1", line_id="a", period_end=datetime(2026, 11, 3, tzinfo=UTC)),
        line(5, 0, tenant_id="t2", line_id="b", period_end=split_end),
        line(
            4,
            0,
            tenant_id=None,
            plan=None,
            line_id="c",
            period_end=datetime(2026, 11, 2, tzinfo=UTC),
        ),
    ]
    first, second = date(2026, 11, 1), date(2026, 11, 2)
    warehouse = {("t1", first): 4, ("t1", second): 5, ("t2", first): 2, ("t2", second): 3}
    stored = {("t1", first): 4, ("t1", second): 6, ("t2", second): 3}
    ledger = {("t1", second): 6, ("t2", first): 1}
    asked: list[tuple[str, date]] = []

    def stripe(billed: BilledLine, day: date) -> int:
        asked.append((billed.line_id, day))
        return {"a": 7, "b": 1, "c": 2}[billed.line_id]

    truths = {"b": PeriodTruth(START, split_end, 5, 0, 0, head_before=0, tail_after=0)}
    rows = audit_lines(
        lines,
        warehouse=warehouse,
        stored=stored,
        ledger=ledger,
        stripe_day_total=stripe,
        truth_of=lambda billed: truths.get(billed.line_id),
    )
    assert [r.line.line_id for r in rows] == ["a", "b", "c"]
    # Line a: the whole days Nov 1 and 2; line b: Nov 1 and 2, not the cut Nov 3; c: Nov 1.
    assert asked == [("a", first), ("a", second), ("b", first), ("b", second), ("c", first)]
    a, b, c = rows
    assert (a.warehouse, a.daily_usage, a.ledger, a.stripe) == (9, 10, 6, 14)
    assert (b.warehouse, b.daily_usage, b.ledger, b.stripe) == (5, 3, 1, 2)
    assert b.truth_method == truths["b"].method
    # The unknown tenant's sources are empty, its meter is read, its plan is unknown.
    assert (c.warehouse, c.daily_usage, c.ledger, c.stripe) == (0, 0, 0, 2)
    assert "tenant or plan unknown: the amount cannot be recomputed" in c.causes


def test_a_line_whose_sources_cannot_be_read_is_reported_and_the_others_audited() -> None:
    lines = [
        line(0, 0, line_id="gone", customer_id="cus_gone", meter_id="mtr_gone"),
        line(0, 0, line_id="ok", period_end=START + timedelta(days=1)),
    ]

    def stripe(billed: BilledLine, day: date) -> int:
        if billed.meter_id == "mtr_gone":
            raise LookupError("no such meter: mtr_gone")
        return 0

    rows = audit_lines(lines, warehouse={}, stored={}, ledger={}, stripe_day_total=stripe)
    gone, ok = rows
    assert ok.clean and ok.line.line_id == "ok"
    assert not gone.clean and gone.difference_cents == 0
    assert gone.causes == [
        "the line's usage sources could not be read (LookupError: no such meter: mtr_gone); "
        "tenant t1, customer cus_gone, meter mtr_gone"
    ]
