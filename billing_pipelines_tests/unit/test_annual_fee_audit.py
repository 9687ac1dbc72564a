"""The audit's base-fee sentences for annual tenants: a yearly fee per yearly period."""

from __future__ import annotations

from datetime import UTC, datetime

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.reconciliation.usage_audit import fee_sentence

PRO = load_catalog().plans["pro"]
STARTER = load_catalog().plans["starter"]


def test_a_yearly_fee_over_its_year_is_named_as_the_yearly_base_fee() -> None:
    start = datetime(2026, 7, 9, 13, 17, tzinfo=UTC)
    end = datetime(2027, 7, 9, 13, 17, tzinfo=UTC)  # 365 days
    assert fee_sentence(PRO, 99_000, "usd", start, end, "1 × Pro (at $990.00 / year)") == (
        "For 2026-07-09 to 2027-07-09 (UTC): the Pro plan's yearly base fee, $990.00 "
        "(usage is billed every month on its own lines)."
    )
    leap_end = datetime(2028, 7, 9, 13, 17, tzinfo=UTC)  # 366 days across Feb 29, 2028
    assert "yearly base fee" in fee_sentence(PRO, 99_000, "usd", end, leap_end, None)


def test_a_yearly_amount_over_a_month_is_not_taken_for_the_base_fee() -> None:
    start = datetime(2026, 7, 9, 13, 17, tzinfo=UTC)
    end = datetime(2026, 8, 9, 13, 17, tzinfo=UTC)
    assert fee_sentence(PRO, 99_000, "usd", start, end, "Something else") == (
        "For 2026-07-09 to 2026-08-09 (UTC): Something else, $990.00."
    )
    # The monthly fee over a month is still the monthly base fee.
    assert fee_sentence(PRO, 9_900, "usd", start, end, None) == (
        "For 2026-07-09 to 2026-08-09 (UTC): the Pro plan's monthly base fee, $99.00."
    )


def test_a_plan_without_a_yearly_fee_never_names_one() -> None:
    start = datetime(2026, 7, 9, 13, 17, tzinfo=UTC)
    end = datetime(2027, 7, 9, 13, 17, tzinfo=UTC)
    assert fee_sentence(STARTER, 99_000, "usd", start, end, None) == (
        "For 2026-07-09 to 2027-07-09 (UTC): an adjustment (proration or credit), $990.00."
    )
