"""A tenant's tax location: what Stripe Tax needs to locate the customer, checked before any write.

Stripe Tax locates a customer from the billing address; what it needs depends on the country
(docs.stripe.com/tax/invoicing, "Set up the customer"): customers outside the US need at least
a country, customers in the US a 5-digit postal code (ZIP+4 is accepted: docs.stripe.com/tax/
customer-locations, "Supported address formats"; country and state alone are not enough), and
customers in Canada a province or a postal code. The country is always a two-letter ISO 3166-1
code. Checking this locally refuses a tenant in one line before anything is stored or created;
Stripe checks it again (`tax[validate_location]=immediately`) when the customer is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from billing_pipelines.lib.errors import BillingConfigError

_COUNTRY = re.compile(r"[A-Z]{2}")
_US_ZIP = re.compile(r"\d{5}(-\d{4})?")
_CA_POSTAL = re.compile(r"[A-Z]\d[A-Z] ?\d[A-Z]\d")
CA_PROVINCES = frozenset(
    {"AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT"}
)
# A customer tax id as Stripe's `tax_id_data` takes it: a type such as eu_vat, gb_vat, us_ein,
# ca_bn and the value (docs.stripe.com/billing/customer/tax-ids lists the types).
_TAX_ID_TYPE = re.compile(r"[a-z]{2}_[a-z_]{2,12}")


class TaxLocationError(BillingConfigError):
    """A tenant Stripe Tax could not locate: the message names what is missing."""


@dataclass(frozen=True)
class TaxId:
    """One customer tax id (e.g. eu_vat DE123456789), shown on invoices, used for reverse charge."""

    type: str
    value: str

    @classmethod
    def parse(cls, text: str) -> TaxId:
        """`TYPE:VALUE` (e.g. `eu_vat:DE123456789`), or one clear error."""
        kind, sep, value = text.strip().partition(":")
        kind, value = kind.strip().lower(), value.strip().replace(" ", "")
        if not sep or not _TAX_ID_TYPE.fullmatch(kind) or not value or len(value) > 64:
            raise TaxLocationError(
                f"tax id {text!r} is not TYPE:VALUE with a Stripe tax id type "
                "(e.g. eu_vat:DE123456789, gb_vat:GB123456789, us_ein:12-3456789)"
            )
        return cls(kind, value)


@dataclass(frozen=True)
class TaxLocation:
    """The billing address fields Stripe Tax reads, and the customer's tax ids."""

    country: str | None = None
    postal_code: str | None = None
    state: str | None = None
    city: str | None = None
    line1: str | None = None
    tax_ids: tuple[TaxId, ...] = field(default_factory=tuple)

    @property
    def given(self) -> bool:
        """True when any address field or tax id was given."""
        return any((self.country, self.postal_code, self.state, self.city, self.line1)) or bool(
            self.tax_ids
        )

    def address_params(self) -> dict[str, str]:
        """The customer's `address` as Stripe takes it (only the fields given)."""
        fields_ = {
            "country": self.country,
            "postal_code": self.postal_code,
            "state": self.state,
            "city": self.city,
            "line1": self.line1,
        }
        return {k: v for k, v in fields_.items() if v}

    def tax_id_data(self) -> list[dict[str, str]]:
        """The customer's `tax_id_data` as Stripe takes it at creation."""
        return [{"type": t.type, "value": t.value} for t in self.tax_ids]

    def describe(self) -> str:
        """The location in a few words, for run metadata and the CLI."""
        parts = [p for p in (self.postal_code, self.state, self.country) if p]
        ids = ", ".join(f"{t.type} {t.value}" for t in self.tax_ids)
        return " ".join(parts) + (f" (tax ids: {ids})" if ids else "")


def _clean(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def tax_location(
    *,
    country: str | None = None,
    postal_code: str | None = None,
    state: str | None = None,
    city: str | None = None,
    line1: str | None = None,
    tax_ids: list[str] | tuple[str, ...] = (),
) -> TaxLocation:
    """A location from raw inputs, normalized (upper-case codes), tax ids parsed."""
    country_ = _clean(country)
    state_ = _clean(state)
    postal = _clean(postal_code)
    return TaxLocation(
        country=country_.upper() if country_ else None,
        postal_code=postal.upper() if postal else None,
        state=state_.upper() if state_ else None,
        city=_clean(city),
        line1=_clean(line1),
        tax_ids=tuple(TaxId.parse(t) for t in tax_ids),
    )


def missing_for_tax(location: TaxLocation) -> str | None:
    """What Stripe Tax would still need to locate this customer, in words; None when enough."""
    if not location.country:
        return "a country (two-letter ISO code, --country)"
    if not _COUNTRY.fullmatch(location.country):
        return f"a two-letter ISO country code (got {location.country!r})"
    if location.country == "US":
        if not location.postal_code:
            return (
                "a 5-digit US postal code (--postal-code): country and state alone are not enough"
            )
        if not _US_ZIP.fullmatch(location.postal_code):
            return f"a 5-digit US postal code (got {location.postal_code!r})"
    if location.country == "CA":
        if not location.postal_code and not location.state:
            return "a Canadian province (--state, e.g. ON) or postal code (--postal-code)"
        if location.state and location.state not in CA_PROVINCES:
            return f"a Canadian province code (got {location.state!r})"
        if location.postal_code and not _CA_POSTAL.fullmatch(location.postal_code):
            return f"a Canadian postal code like K1A 0B1 (got {location.postal_code!r})"
    return None


def check_tax_location(tenant_id: str, location: TaxLocation) -> TaxLocation:
    """The location when Stripe Tax can use it, else one line naming what is missing."""
    missing = missing_for_tax(location)
    if missing:
        raise TaxLocationError(
            f"tenant {tenant_id}: automatic tax is on and Stripe Tax cannot locate this "
            f"customer: missing {missing}"
        )
    return location
