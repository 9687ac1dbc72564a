"""The plan catalog and its graduated-tier money math."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.errors import BillingConfigError


def test_packaged_catalog_matches_design() -> None:
    catalog = load_catalog()
    assert catalog.currency == "usd" and catalog.trial_days == 14
    assert {k: (p.base_monthly_cents, p.included_queries) for k, p in catalog.plans.items()} == {
        "starter": (2900, 10_000),
        "pro": (9900, 100_000),
        "enterprise": (49900, 1_000_000),
    }


@pytest.mark.parametrize(
    ("plan", "queries", "overage_cents", "total_cents"),
    [
        ("pro", 125_000, Decimal("2000.00"), 11_900),  # 25,000 over x $0.0008 = $20.00
        ("pro", 100_000, Decimal(0), 9_900),  # exactly the included quantity is free
        ("starter", 10_001, Decimal("0.1"), 2_900),  # a tenth of a cent rounds away
        ("starter", 10_005, Decimal("0.5"), 2_901),  # half a cent rounds up, as Stripe does
        ("enterprise", 0, Decimal(0), 49_900),
    ],
)
def test_period_amounts(plan: str, queries: int, overage_cents: Decimal, total_cents: int) -> None:
    p = load_catalog().plan(plan)
    assert p.overage_cents(queries) == overage_cents
    assert p.period_total_cents(queries) == total_cents


def test_negative_usage_is_rejected() -> None:
    with pytest.raises(ValueError, match="queries must be >= 0"):
        load_catalog().plan("pro").overage_cents(-1)


def test_unknown_plan_lists_known_ones() -> None:
    with pytest.raises(BillingConfigError, match="unknown plan 'gold'.*enterprise, pro, starter"):
        load_catalog().plan("gold")


def test_plan_without_price_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "plans.toml"
    bad.write_text(
        'currency = "usd"\ntrial_days = 14\n[plans.free]\nname = "Free"\n'
        "base_monthly_cents = 0\nincluded_queries = 10\n"
    )
    with pytest.raises(BillingConfigError, match="invalid plan catalog"):
        load_catalog(bad)
