"""What Stripe Tax needs to locate a customer (docs.stripe.com/tax/invoicing, "Set up the
customer"), checked before anything is written, and the catalog's [tax] switch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from billing_pipelines.lib.catalog.plans import CATALOG_PATH_ENV, load_catalog
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.tax.location import (
    TaxId,
    TaxLocationError,
    check_tax_location,
    missing_for_tax,
    tax_location,
)


@pytest.mark.parametrize(
    ("inputs", "missing"),
    [
        ({}, "a country"),
        ({"postal_code": "94103"}, "a country"),
        ({"country": "USA", "postal_code": "94103"}, "two-letter ISO country code"),
        ({"country": "US"}, "5-digit US postal code"),
        ({"country": "US", "state": "CA"}, "country and state alone are not enough"),
        ({"country": "us", "postal_code": "9410"}, "5-digit US postal code (got '9410')"),
        ({"country": "CA"}, "Canadian province"),
        ({"country": "CA", "state": "XX"}, "Canadian province code (got 'XX')"),
        ({"country": "CA", "postal_code": "12345"}, "Canadian postal code"),
    ],
)
def test_a_location_stripe_tax_cannot_use_names_what_is_missing(
    inputs: dict[str, Any], missing: str
) -> None:
    location = tax_location(**inputs)
    found = missing_for_tax(location)
    assert found is not None and missing in found
    with pytest.raises(TaxLocationError) as refused:
        check_tax_location("t-1", location)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("tenant t-1: automatic tax is on")
    assert missing in message


@pytest.mark.parametrize(
    "inputs",
    [
        {"country": "US", "postal_code": "94103"},
        {"country": "US", "postal_code": "97712-4918"},
        {"country": "ca", "state": "on"},
        {"country": "CA", "postal_code": "k1a 0b1"},
        {"country": "DE"},
        {"country": "GB", "city": "London", "line1": "1 Test Street"},
    ],
)
def test_a_location_stripe_tax_can_use_passes(inputs: dict[str, Any]) -> None:
    location = check_tax_location("t-1", tax_location(**inputs))
    assert location.country == inputs["country"].upper()
    assert location.address_params()["country"] == inputs["country"].upper()


def test_tax_ids_are_type_and_value() -> None:
    location = tax_location(country="DE", tax_ids=["EU_VAT: DE 123456789"])
    assert location.tax_ids == (TaxId("eu_vat", "DE123456789"),)
    assert location.tax_id_data() == [{"type": "eu_vat", "value": "DE123456789"}]
    for bad in ("DE123456789", "vat:DE1", "eu_vat:", ":DE1"):
        with pytest.raises(TaxLocationError, match="is not TYPE:VALUE"):
            TaxId.parse(bad)


HEAD = 'currency = "usd"\ntrial_days = 14\n[plans.pro]\nname = "Pro"\nbase_monthly_cents = 9900\n'
HEAD += 'included_queries = 100_000\noverage_cents_per_query = "0.08"\n'


def test_the_catalog_turns_automatic_tax_on_and_off(tmp_path: Path) -> None:
    path = tmp_path / "plans.toml"
    path.write_text(HEAD)
    assert load_catalog(path).automatic_tax is False
    path.write_text(HEAD + "[tax]\nautomatic = true\n")
    assert load_catalog(path).automatic_tax is True
    assert load_catalog().automatic_tax is False  # the packaged catalog ships with tax off
    for bad, said in (
        ('[tax]\nautomatic = "yes"\n', "automatic must be true or false"),
        ("[tax]\nrate = 5\n", "unknown setting rate"),
    ):
        path.write_text(HEAD + bad)
        with pytest.raises(BillingConfigError, match=said):
            load_catalog(path)


def test_the_catalog_file_can_be_chosen_by_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "taxed.toml"
    path.write_text(HEAD + "[tax]\nautomatic = true\n")
    monkeypatch.setenv(CATALOG_PATH_ENV, str(path))
    assert load_catalog().automatic_tax is True and set(load_catalog().plans) == {"pro"}
    monkeypatch.setenv(CATALOG_PATH_ENV, str(tmp_path / "absent.toml"))
    with pytest.raises(BillingConfigError, match=f"cannot be read.*{CATALOG_PATH_ENV}"):
        load_catalog()
