"""Catalog validation rule by rule, and the tier math against integer arithmetic of its own."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_pipelines.lib.catalog import plans as catalog_module
from billing_pipelines.lib.catalog.plans import Plan, load_catalog
from billing_pipelines.lib.errors import BillingConfigError

HEAD = 'currency = "usd"\ntrial_days = 14\n'
QUERIES_METER = (
    '[meters.queries]\nevent_name = "rag_api_queries"\nusage_column = "billable_queries"\n'
)


def plan_table(
    key: str = "pro",
    *,
    base: str = "9900",
    included: str = "100_000",
    overage: str = '"0.08"',
    name: str = '"Pro"',
) -> str:
    return (
        f"[plans.{key}]\nname = {name}\nbase_monthly_cents = {base}\n"
        f"included_queries = {included}\noverage_cents_per_query = {overage}\n"
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    """The one error line a bad catalog gets (the path prefix is left out)."""
    path = write(tmp_path, text)
    with pytest.raises(BillingConfigError) as refused:
        load_catalog(path)
    message = str(refused.value)
    prefix = f"{path}: "
    assert message.startswith(prefix), message
    return message[len(prefix) :]


# ---- the tier math ------------------------------------------------------------------------------


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    base=st.integers(min_value=0, max_value=10**7),
    included=st.integers(min_value=0, max_value=10**6),
    # An overage price of `numerator` ten-thousandths of a cent (0.0001 .. 10 cents).
    numerator=st.integers(min_value=1, max_value=100_000),
    queries=st.integers(min_value=0, max_value=3 * 10**6),
)
def test_period_total_rounds_half_up_to_the_cent(
    base: int, included: int, numerator: int, queries: int
) -> None:
    plan = Plan("p", "P", base, included, Decimal(numerator).scaleb(-4))
    # In ten-thousandths of a cent, with integers only: half a cent (5,000) rounds up.
    exact = base * 10_000 + max(0, queries - included) * numerator
    assert plan.period_total_cents(queries) == (exact + 5_000) // 10_000
    assert plan.overage_cents(queries) * 10_000 == exact - base * 10_000


@pytest.mark.parametrize(
    ("queries", "total"),
    [(10, 100), (11, 100), (14, 100), (15, 101), (16, 101), (24, 101), (25, 102)],
)
def test_tenths_of_a_cent_round_half_up(queries: int, total: int) -> None:
    # 0.1 cent per query above 10: 5 queries over are exactly half a cent, which rounds up.
    assert Plan("p", "P", 100, 10, Decimal("0.1")).period_total_cents(queries) == total


# ---- amounts ------------------------------------------------------------------------------------


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(base=st.integers(min_value=-3, max_value=3), included=st.integers(min_value=-3, max_value=3))
def test_only_a_negative_base_fee_or_included_quantity_is_refused(
    base: int, included: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp_path = tmp_path_factory.mktemp("catalog")
    text = HEAD + plan_table(base=str(base), included=str(included))
    if base < 0 or included < 0:
        assert refusal(tmp_path, text) == "plan pro has a negative amount"
    else:
        plan = load_catalog(write(tmp_path, text)).plan("pro")
        assert (plan.base_monthly_cents, plan.included_queries) == (base, included)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base", "2900.5"),  # int() would bill 2900
        ("included", "10.7"),  # int() would include 10
        ("base", "true"),  # int() would bill 1 cent
        ("included", "false"),
    ],
)
def test_a_fractional_or_boolean_count_is_refused_not_truncated(
    tmp_path: Path, field: str, value: str
) -> None:
    name = {"base": "base_monthly_cents", "included": "included_queries"}[field]
    text = HEAD + plan_table(**{field: value})
    shown = {"true": "True", "false": "False"}.get(value, value)
    assert refusal(tmp_path, text) == (
        f"plan pro has an invalid amount ({name} must be a whole number, got {shown})"
    )


def test_whole_numbers_written_as_floats_or_strings_are_read_exactly(tmp_path: Path) -> None:
    text = HEAD + plan_table(base='"2900"', included="10000.0")
    plan = load_catalog(write(tmp_path, text)).plan("pro")
    assert (plan.base_monthly_cents, plan.included_queries) == (2900, 10_000)


@pytest.mark.parametrize("value", ['"NaN"', "nan", '"Infinity"', "inf", '"-Infinity"', '"sNaN"'])
def test_a_price_that_is_not_a_finite_number_is_one_error_line(tmp_path: Path, value: str) -> None:
    message = refusal(tmp_path, HEAD + plan_table(overage=value))
    assert message.startswith("plan pro has an invalid amount (overage_cents_per_query must be")


@pytest.mark.parametrize(("value", "accepted"), [("0", True), ("30", True), ("-1", False)])
def test_trial_days_must_not_be_negative(tmp_path: Path, value: str, accepted: bool) -> None:
    text = HEAD.replace("14", value) + plan_table()
    if accepted:
        assert load_catalog(write(tmp_path, text)).trial_days == int(value)
    else:
        assert refusal(tmp_path, text) == f"trial_days must be >= 0, got {value}"


def test_fractional_trial_days_are_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, HEAD.replace("14", "14.5") + plan_table())
    assert message == "invalid plan catalog (trial_days must be a whole number, got 14.5)"


# ---- missing and malformed plans ----------------------------------------------------------------


def test_a_plan_that_is_not_a_table_is_named(tmp_path: Path) -> None:
    text = HEAD + "[plans]\ngold = 5\n"
    assert refusal(tmp_path, text) == "plan gold is not a table of fields"


def test_a_plan_missing_only_unpriced_fields_is_not_said_to_have_no_price(tmp_path: Path) -> None:
    text = HEAD + "[plans.gold]\nbase_monthly_cents = 1\noverage_cents_per_query = 1\n"
    assert refusal(tmp_path, text) == (
        "invalid plan catalog: plan gold missing name, included_queries"
    )


def test_every_missing_price_field_is_listed(tmp_path: Path) -> None:
    text = HEAD + '[plans.gold]\nname = "Gold"\n'
    assert refusal(tmp_path, text) == (
        "invalid plan catalog: plan gold has no price: missing base_monthly_cents, "
        "included_queries, overage_cents_per_query"
    )


def test_a_catalog_without_currency_names_the_key(tmp_path: Path) -> None:
    text = "trial_days = 14\n" + plan_table()
    assert refusal(tmp_path, text) == "invalid plan catalog ('currency')"


def test_the_packaged_catalog_is_named_plans_toml_in_its_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packaged file is found through importlib.resources: a broken copy stands in for it.
    (tmp_path / "plans.toml").write_text("trial_days = 14\n")
    monkeypatch.setattr(catalog_module.resources, "files", lambda package: tmp_path)
    with pytest.raises(BillingConfigError) as refused:
        load_catalog()
    assert str(refused.value) == "plans.toml: invalid plan catalog ('plans')"


# ---- meters -------------------------------------------------------------------------------------


def test_meters_are_read_as_written_with_the_metric_as_default_display_name(
    tmp_path: Path,
) -> None:
    text = HEAD + plan_table() + QUERIES_METER.replace("rag_api_queries", "my_queries")
    meters = load_catalog(write(tmp_path, text)).meters
    assert list(meters) == ["queries"]
    meter = meters["queries"]
    assert (meter.metric, meter.event_name, meter.display_name, meter.usage_column) == (
        "queries",
        "my_queries",
        "queries",
        "billable_queries",
    )
    named = QUERIES_METER + 'display_name = "Billable queries"\n'
    assert load_catalog(write(tmp_path, HEAD + plan_table() + named)).meters[
        "queries"
    ].display_name == ("Billable queries")


def test_a_catalog_without_meters_bills_queries_on_the_default_meter(tmp_path: Path) -> None:
    meters = load_catalog(write(tmp_path, HEAD + plan_table())).meters
    assert {k: (m.event_name, m.usage_column) for k, m in meters.items()} == {
        "queries": ("rag_api_queries", "billable_queries")
    }


def test_meters_without_queries_are_refused(tmp_path: Path) -> None:
    text = HEAD + plan_table() + QUERIES_METER.replace("queries]", "tokens]")
    assert refusal(tmp_path, text) == "no [meters.queries]: every plan bills queries"


def test_one_plan_and_several_unpriced_metrics_are_named_in_the_singular(tmp_path: Path) -> None:
    extra = (
        '[meters.tokens]\nevent_name = "t"\nusage_column = "tokens"\n'
        '[meters.embeddings]\nevent_name = "e"\nusage_column = "embeddings"\n'
    )
    assert refusal(tmp_path, HEAD + plan_table() + QUERIES_METER + extra) == (
        "plan pro has no price for metric embeddings, tokens ([meters.embeddings]): "
        "plans price only queries (overage_cents_per_query); remove the meter"
    )


def test_an_unpriced_meter_is_allowed_while_no_plan_exists(tmp_path: Path) -> None:
    extra = '[meters.tokens]\nevent_name = "t"\nusage_column = "tokens"\n'
    catalog = load_catalog(write(tmp_path, HEAD + "[plans]\n" + QUERIES_METER + extra))
    assert sorted(catalog.meters) == ["queries", "tokens"] and catalog.plans == {}


def test_a_meter_on_an_unknown_usage_column_lists_the_known_ones(tmp_path: Path) -> None:
    text = HEAD + plan_table() + QUERIES_METER.replace('"billable_queries"', '"clicks"')
    assert refusal(tmp_path, text) == (
        "meter queries reads unknown usage column 'clicks' "
        "(known: billable_queries, tokens, embeddings)"
    )
