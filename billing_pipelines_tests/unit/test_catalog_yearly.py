"""A plan's optional yearly base fee: validated at load, synced as a yearly price beside the
monthly ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_pipelines.lib.catalog.plans import (
    ANNUAL,
    MONTHLY,
    check_billing_cycle,
    load_catalog,
)
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.stripe.catalog import base_lookup_key_for, price_specs

HEAD = 'currency = "usd"\ntrial_days = 14\n'
PRO = (
    '[plans.pro]\nname = "Pro"\nbase_monthly_cents = 9900\nincluded_queries = 100_000\n'
    'overage_cents_per_query = "0.08"\n'
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(HEAD + text)
    return path


def test_packaged_catalog_declares_yearly_fees_for_pro_and_enterprise() -> None:
    catalog = load_catalog()
    assert {k: p.base_yearly_cents for k, p in catalog.plans.items()} == {
        "starter": None,
        "pro": 99_000,
        "enterprise": 499_000,
    }


def test_a_yearly_fee_becomes_a_yearly_licensed_price_beside_the_monthly_ones(
    tmp_path: Path,
) -> None:
    catalog = load_catalog(_write(tmp_path, PRO + "base_yearly_cents = 99000\n"))
    specs = {s.lookup_key: s for s in price_specs(catalog)}
    assert sorted(specs) == ["pro_base_monthly", "pro_base_yearly", "pro_queries_overage_monthly"]
    yearly = specs["pro_base_yearly"].create_params({"rag_api_queries": "mtr_x"})
    assert yearly["recurring"] == {"interval": "year", "usage_type": "licensed"}
    assert yearly["unit_amount"] == 99_000
    assert yearly["metadata"]["billing_cycle"] == "annual"
    usage = specs["pro_queries_overage_monthly"].create_params({"rag_api_queries": "mtr_x"})
    assert usage["recurring"]["interval"] == "month"  # usage stays monthly
    monthly = specs["pro_base_monthly"].create_params({"rag_api_queries": "mtr_x"})
    assert monthly["recurring"]["interval"] == "month"
    pro = catalog.plan("pro")
    assert base_lookup_key_for(pro, ANNUAL) == "pro_base_yearly"
    assert base_lookup_key_for(pro, MONTHLY) == "pro_base_monthly"
    assert (pro.base_cents(ANNUAL), pro.base_cents(MONTHLY)) == (99_000, 9_900)


def test_a_plan_without_a_yearly_fee_has_no_yearly_price_and_refuses_annual(
    tmp_path: Path,
) -> None:
    catalog = load_catalog(_write(tmp_path, PRO))
    assert [s.lookup_key for s in price_specs(catalog)] == [
        "pro_base_monthly",
        "pro_queries_overage_monthly",
    ]
    with pytest.raises(BillingConfigError) as refused:
        check_billing_cycle(catalog.plan("pro"), ANNUAL)
    assert str(refused.value) == (
        "plan pro has no yearly base fee: annual billing needs base_yearly_cents "
        "in [plans.pro] of plans.toml"
    )
    with pytest.raises(BillingConfigError, match="billing cycle must be one of monthly, annual"):
        check_billing_cycle(catalog.plan("pro"), "weekly")


@pytest.mark.parametrize("bad", ["0", "-5", "990.5", '"99000"', "true"])
def test_a_yearly_fee_that_is_not_a_positive_integer_is_one_clear_error(
    tmp_path: Path, bad: str
) -> None:
    with pytest.raises(BillingConfigError) as refused:
        load_catalog(_write(tmp_path, PRO + f"base_yearly_cents = {bad}\n"))
    message = str(refused.value)
    assert "\n" not in message
    assert "plan pro base_yearly_cents must be a positive whole number of cents" in message
