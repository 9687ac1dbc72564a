"""The audit's sentences word for word: base fees without or with a period, unreadable lines."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from billing_pipelines.lib.catalog.plans import Plan
from billing_pipelines.lib.reconciliation.usage_audit import (
    AuditRow,
    BilledLine,
    explain_line,
    fee_sentence,
    unreadable_line,
)

PRO = Plan(
    key="pro",
    name="Pro",
    base_monthly_cents=9900,
    included_queries=100_000,
    overage_cents_per_query=Decimal("0.08"),
    base_yearly_cents=99000,
)


def test_a_monthly_fee_without_a_period_is_named_without_one() -> None:
    assert fee_sentence(PRO, 9900, "usd", None, None, "ignored") == (
        "the Pro plan's monthly base fee, $99.00."
    )
    assert fee_sentence(PRO, 99000, "usd", None, None, None) == (
        "the Pro plan's yearly base fee, $990.00 (usage is billed every month on its own lines)."
    )


def test_a_line_with_only_a_start_is_its_description_without_a_period() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    assert fee_sentence(PRO, 123, "eur", start, None, None) == (
        "an adjustment (proration or credit), €1.23."
    )


def test_the_period_ends_the_second_before_its_end_in_the_line_currency() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    # Ends at midnight: the last day named is the day before.
    assert fee_sentence(PRO, 9900, "eur", start, datetime(2026, 12, 1, tzinfo=UTC), None) == (
        "For 2026-11-01 to 2026-11-30 (UTC): the Pro plan's monthly base fee, €99.00."
    )
    # Ends one second after midnight: that day is in the period.
    end = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    assert fee_sentence(PRO, 9900, "gbp", start, end, None) == (
        "For 2026-11-01 to 2026-12-01 (UTC): the Pro plan's monthly base fee, £99.00."
    )


def _line(**kw: object) -> BilledLine:
    base: dict[str, object] = dict(
        invoice_id="in_9",
        line_id="il_9",
        customer_id="cus_9",
        tenant_id="t9",
        plan=PRO,
        currency="usd",
        period_start=datetime(2026, 11, 1, 14, 30, tzinfo=UTC),
        period_end=datetime(2026, 12, 1, 14, 30, tzinfo=UTC),
        quantity=120_000,
        amount=1600,
        meter_id="mtr_9",
    )
    base.update(kw)
    return BilledLine(**base)  # type: ignore[arg-type]


def test_an_unreadable_line_is_its_own_row_with_nothing_compared() -> None:
    billed = _line()
    assert unreadable_line(billed, LookupError("no such meter")) == AuditRow(
        line=billed,
        warehouse=0,
        daily_usage=0,
        ledger=0,
        stripe=0,
        recomputed_amount=1600,
        difference_cents=0,
        causes=[
            "the line's usage sources could not be read (LookupError: no such meter); "
            "tenant t9, customer cus_9, meter mtr_9"
        ],
        explanation=explain_line(billed),
        truth_method="not computed: the sources could not be read",
    )
    assert explain_line(billed).startswith("For 2026-11-01 to 2026-12-01 (UTC): ")


def test_an_unreadable_line_of_an_unknown_tenant_and_meter_says_so() -> None:
    billed = _line(tenant_id=None, meter_id=None)
    row = unreadable_line(billed, ValueError("bad day"))
    assert row.causes == [
        "the line's usage sources could not be read (ValueError: bad day); "
        "tenant unknown, customer cus_9, meter none"
    ]
    assert not row.clean
