"""A plans.toml with a plan that has no price is refused at load, naming the plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.errors import BillingConfigError

HEAD = 'currency = "usd"\ntrial_days = 14\n'
PRO = (
    '[plans.pro]\nname = "Pro"\nbase_monthly_cents = 9900\nincluded_queries = 100_000\n'
    'overage_cents_per_query = "0.08"\n'
)


def _load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plans.toml"
    path.write_text(HEAD + text)
    with pytest.raises(BillingConfigError) as refused:
        load_catalog(path)
    return str(refused.value)


def test_plan_without_base_price_is_named(tmp_path: Path) -> None:
    text = (
        PRO + '[plans.gold]\nname = "Gold"\nincluded_queries = 5\noverage_cents_per_query = "1"\n'
    )
    assert _load(tmp_path, text).endswith(
        "plans.toml: invalid plan catalog: plan gold has no price: missing base_monthly_cents"
    )


def test_plan_without_overage_price_is_named(tmp_path: Path) -> None:
    text = PRO + '[plans.free]\nname = "Free"\nbase_monthly_cents = 0\nincluded_queries = 10\n'
    assert _load(tmp_path, text).endswith("plan free has no price: missing overage_cents_per_query")


def test_plan_with_an_unparseable_price_is_named(tmp_path: Path) -> None:
    text = PRO.replace('"0.08"', '"eight cents"')
    assert "plan pro has an invalid amount" in _load(tmp_path, text)


def test_plan_with_a_zero_overage_price_is_named(tmp_path: Path) -> None:
    assert _load(tmp_path, PRO.replace('"0.08"', '"0"')).endswith("plan pro has no overage price")


def test_a_metric_no_plan_prices_is_refused_naming_the_plans(tmp_path: Path) -> None:
    meters = (
        '[meters.queries]\nevent_name = "rag_api_queries"\nusage_column = "billable_queries"\n'
        '[meters.tokens]\nevent_name = "rag_api_tokens"\nusage_column = "tokens"\n'
    )
    starter = PRO.replace("pro", "starter").replace("Pro", "Starter")
    message = _load(tmp_path, PRO + starter + meters)
    assert "plans pro, starter have no price for metric tokens ([meters.tokens])" in message
    assert "plans price only queries (overage_cents_per_query)" in message


def test_the_packaged_catalog_still_loads() -> None:
    assert sorted(load_catalog().plans) == ["enterprise", "pro", "starter"]
