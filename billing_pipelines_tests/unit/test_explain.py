"""`billing explain` in words: the invoice line, the days, the ledger, Stripe, the SQL, verdict."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.reconciliation.explain import (
    Day,
    Explanation,
    LedgerVersion,
    Line,
    billed_days,
    parse_period,
    render,
    sql_literal,
)

PRO = load_catalog().plans["pro"]  # $99.00, 100,000 included, 0.08 cents a query over
START = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
END = datetime(2026, 3, 17, 9, 30, tzinfo=UTC)  # a short period: three midnights inside


def line(quantity: int, amount: int, meter: str | None = "mtr_9") -> Line:
    return Line(
        snapshot_date=date(2026, 3, 18),
        invoice_id="in_42",
        invoice_number="ACME-0007",
        invoice_status="paid",
        invoice_total=9_900 + amount,
        currency="usd",
        line_id="il_7",
        customer_id="cus_7",
        tenant_id="t-acme",
        plan=PRO,
        period_start=START,
        period_end=END,
        quantity=quantity,
        amount=amount,
        meter_id=meter,
    )


def version(day: date, v: int, value: int, status: str = "delivered") -> LedgerVersion:
    return LedgerVersion(
        day=day,
        version=v,
        value=value,
        identifier=f"bp-{day:%Y%m%d}-queries-v{v}-t-acme",
        status=status,
        event_name="rag_api_queries",
        delivered_at=datetime(2026, 3, 16, 1, 0, tzinfo=UTC) if status == "delivered" else None,
        last_error=None,
    )


D15, D16, D17 = date(2026, 3, 15), date(2026, 3, 16), date(2026, 3, 17)


def test_the_billed_days_are_the_midnights_inside_the_period() -> None:
    days, start, end = billed_days(line(0, 0))
    assert days == [D15, D16, D17]
    assert start == datetime(2026, 3, 15, tzinfo=UTC)
    assert end == datetime(2026, 3, 18, tzinfo=UTC)


def test_a_correct_line_is_explained_down_to_the_meter_events() -> None:
    # 40,000 + 50,000 + 60,000 = 150,000 queries: 50,000 over x 0.08 cents = $40.00.
    text = render(
        Explanation(
            line=line(150_000, 4_000),
            days=[
                Day(D15, 40_000, 40_000, 40_000, 40_000),
                Day(D16, 50_000, 50_000, 50_000, 50_000),
                Day(D17, 60_000, 60_000, 60_000, 60_000),
            ],
            ledger=[
                version(D15, 1, 40_000),
                version(D16, 1, 49_000, "superseded"),
                version(D16, 2, 50_000),
                version(D17, 1, 60_000),
            ],
            sql_start=datetime(2026, 3, 15, tzinfo=UTC),
            sql_end=datetime(2026, 3, 18, tzinfo=UTC),
            sql_count=150_000,
        )
    )
    assert "Invoice ACME-0007 (in_42): paid, total $139.00" in text
    assert "Tenant t-acme (Stripe customer cus_7) on Pro." in text
    assert (
        "bills 150,000 queries for the period 2026-03-14 09:30 UTC to 2026-03-17 09:30 UTC" in text
    )
    assert "You used 150,000 queries: 50,000 over the 100,000 included = $40.00." in text
    assert "2026-03-15 to 2026-03-17 (3 days)" in text
    assert "differs" not in text
    assert (
        "2026-03-16 version 2: 50,000 queries, meter event bp-20260316-queries-v2-t-acme to "
        "rag_api_queries timestamped 2026-03-16 00:00:02 UTC, delivered" in text
    )
    assert "2026-03-16 version 1: 49,000 queries" in text and "superseded" in text
    assert "meter mtr_9: 150,000 queries over the period; the invoice line bills 150,000." in text
    assert "(150,000 billable queries" in text
    assert "tenant_id = 't-acme'" in text
    assert "Verdict: correct." in text
    total_row = [ln for ln in text.splitlines() if ln.strip().startswith("total")]
    assert total_row and total_row[0].split() == ["total", *["150,000"] * 4]


def test_a_double_count_names_the_day_and_the_money() -> None:
    text = render(
        Explanation(
            line=line(250_000, 12_000),
            days=[
                Day(D15, 125_000, 125_000, 125_000, 125_000),
                Day(D16, 0, None, 125_000, 125_000),
                Day(D17, 0, None, None, 0),
            ],
            ledger=[version(D15, 1, 125_000), version(D16, 1, 125_000)],
            sql_start=datetime(2026, 3, 15, tzinfo=UTC),
            sql_end=datetime(2026, 3, 18, tzinfo=UTC),
            sql_count=125_000,
            causes=["2026-03-16: the report ledger delivered 125,000 queries (double count)"],
        )
    )
    rows = {
        ln.split()[0]: ln
        for ln in text.splitlines()
        if ln.startswith("  2026-03-1") and "version" not in ln
    }
    assert rows["2026-03-16"].split()[:5] == ["2026-03-16", "0", "-", "125,000", "125,000"]
    assert rows["2026-03-16"].endswith("<- differs")
    assert not rows["2026-03-15"].endswith("<- differs")
    assert not rows["2026-03-17"].endswith("<- differs")  # no usage, no rows: nothing differs
    assert "Verdict: over-charged." in text
    assert "the warehouse truth of 125,000 queries costs $20.00 (difference $100.00)" in text
    assert "  - 2026-03-16: the report ledger delivered 125,000 queries (double count)" in text


def test_a_line_without_a_meter_says_stripe_was_not_asked() -> None:
    text = render(
        Explanation(
            line=line(0, 0, meter=None),
            days=[],
            ledger=[],
            sql_start=START,
            sql_end=START,
            sql_count=0,
        )
    )
    assert "the line has no meter: Stripe was not asked." in text
    assert "nothing was reported for these days." in text


def test_the_sql_is_written_out_with_quoted_literals() -> None:
    sql = sql_literal(
        "t-a'b\\c", datetime(2026, 3, 15, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    )
    assert "tenant_id = 't-a\\'b\\\\c'" in sql
    assert "timestamp >= toDateTime64('2026-03-15 00:00:00', 3, 'UTC')" in sql
    assert "timestamp < toDateTime64('2026-04-01 00:00:00', 3, 'UTC')" in sql
    assert "{" not in sql


@pytest.mark.parametrize("bad", ["2026-13", "2026-3", "March", "2026-03-01", ""])
def test_a_period_is_a_month(bad: str) -> None:
    with pytest.raises(BillingConfigError, match="--period must be a month as YYYY-MM"):
        parse_period(bad)


def test_a_month_parses_to_its_first_day() -> None:
    assert parse_period("2026-02") == date(2026, 2, 1)
    assert parse_period("2025-12") == date(2025, 12, 1)


def test_without_stripe_every_other_source_is_still_explained() -> None:
    text = render(
        Explanation(
            line=line(150_000, 4_000),
            days=[Day(D15, 150_000, 150_000, 150_000, None), Day(D16, 0, None, None, None)],
            ledger=[version(D15, 1, 150_000)],
            sql_start=datetime(2026, 3, 15, tzinfo=UTC),
            sql_end=datetime(2026, 3, 17, tzinfo=UTC),
            sql_count=150_000,
            stripe_problem="STRIPE_API_KEY is not set",
        )
    )
    assert "not read (STRIPE_API_KEY is not set); every other source is shown above." in text
    assert "differs" not in text  # Stripe unknown is not a difference
    total_row = [ln for ln in text.splitlines() if ln.strip().startswith("total")]
    assert total_row[0].split() == ["total", "150,000", "150,000", "150,000", "-"]
    assert "Verdict: correct." in text
