"""Stripe Tax, only as far as the tests need: customer locations, and tax on invoice lines.

What it follows, page by page:

- Which address locates a customer and what it must hold: the shipping address when present,
  else the billing address (docs.stripe.com/tax/customer-locations, "Which customer address we
  use": an address that is present but invalid raises `customer_tax_location_invalid` instead of
  trying the next one); customers outside the US need at least a country, in the US a 5-digit
  postal code, in Canada a province or a postal code (docs.stripe.com/tax/invoicing, "Set up the
  customer"; a US country and state alone are not enough: customer-locations, "Supported address
  formats"). Without an address Stripe could fall back to the payment method's billing details
  or the customer's IP address; the sandbox never does (the stricter choice: test cards carry
  no billing address here, and a location must be given).
- `tax[validate_location]=immediately` on customer create and update refuses a location Stripe
  Tax cannot use, and nothing is written (customer-locations, "When creating or updating a
  customer, set tax[validate_location]="immediately""); the error code is
  `customer_tax_location_invalid` (docs.stripe.com/error-codes#customer-tax-location-invalid).
  The page gives no message text or `param`: the sandbox names what is missing and `address`.
- `automatic_tax[enabled]=true` on a subscription (docs.stripe.com/billing/taxes/collect-taxes):
  the docs do not say whether creating one for a customer Stripe cannot locate is refused or
  only its invoices go untaxed (customer-locations, "Invoice finalization errors"); the sandbox
  refuses the creation with `customer_tax_location_invalid` (the stricter behaviour).
- Invoices of such a subscription carry `automatic_tax.enabled` and per line `taxes` (amount,
  `tax_behavior`, `taxability_reason`, `taxable_amount`, `type: tax_rate_details`), and the
  invoice `total_taxes` is "the aggregate tax information of all line items", `total_excluding_tax`
  the total before tax and `total` "total after discounts and taxes" (docs.stripe.com/api/invoices
  /object). Tax is calculated at finalization (docs.stripe.com/tax/invoicing: "at the time of
  invoice finalization"): the sandbox recomputes it whenever the lines change, finalization too.
- Rounding: the pages read do not say how Stripe rounds a line's tax. The sandbox rounds each
  line's tax to the cent, half away from zero, and the invoice's tax is the sum of its lines'
  (which is what "aggregate of all line items" requires of the totals).
- Prices whose `tax_behavior` is `unspecified` are treated as `exclusive` (tax added on top), as
  an account whose default tax behavior is exclusive does (docs.stripe.com/tax/products-prices-
  tax-codes-tax-behavior); `inclusive` prices are not modelled.
- A customer with an `eu_vat` tax id outside the account's country is charged no tax with
  `taxability_reason: reverse_charge` (docs.stripe.com/tax/zero-tax, "reverse charge").

TEST DATA, NOT TAX RATES: the rates below are made up for tests, so that a taxed invoice has
round, recognizable numbers. They are not any jurisdiction's rate, and nothing here may be
read as tax advice. A country without a rate here is `not_collecting` (no registration there):
zero tax, as Stripe Tax charges where the account is not registered (docs.stripe.com/tax/zero-tax).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .wire import StripeError

# TEST DATA: made-up percentages for the sandbox only; never real tax rates.
TEST_RATES: dict[str, Decimal] = {
    "US": Decimal("5.00"),
    "CA": Decimal("12.00"),
    "DE": Decimal("20.00"),
}
ACCOUNT_COUNTRY = "US"
EU_COUNTRIES = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()
)
CA_PROVINCES = frozenset("AB BC MB NB NL NS NT NU ON PE QC SK YT".split())
# "The country field must always be a valid ISO country code" (docs.stripe.com/tax/customer-
# locations): the assigned ISO 3166-1 alpha-2 codes (and XK, which Stripe accepts for Kosovo).
ISO_COUNTRIES = frozenset(
    """AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO
    DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU
    GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW
    KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU
    MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW
    PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT
    ZA ZM ZW""".split()
)
LOCATION_INVALID = "customer_tax_location_invalid"


def _address(cus: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The address that locates the customer: shipping when present, else billing."""
    shipping = cus.get("shipping") or None
    if shipping and shipping.get("address"):
        return "shipping_destination", shipping["address"]
    return "billing_address", cus.get("address") or None


def location_problem(cus: dict[str, Any]) -> str | None:
    """What Stripe Tax lacks to locate this customer, in words; None when it can."""
    _, address = _address(cus)
    if not address or not address.get("country"):
        return "a customer address with a country"
    country = str(address["country"])
    postal = str(address.get("postal_code") or "").strip().upper()
    state = str(address.get("state") or "").strip().upper()
    if country not in ISO_COUNTRIES:
        return f"a valid two-letter ISO country code (got {country!r})"
    if country == "US" and not re.fullmatch(r"\d{5}(-\d{4})?", postal):
        return "a 5-digit US postal code"
    if country == "CA":
        province_ok = state in CA_PROVINCES
        postal_ok = bool(re.fullmatch(r"[A-Z]\d[A-Z] ?\d[A-Z]\d", postal))
        if not (province_ok or postal_ok):
            return "a Canadian province or postal code"
    return None


def location_error(problem: str) -> StripeError:
    """Stripe's refusal of a location it cannot use (code customer_tax_location_invalid)."""
    return StripeError(
        400,
        f"The customer's location isn't recognized: Stripe Tax needs {problem}.",
        code=LOCATION_INVALID,
        param="address",
    )


def validate_requested(params: dict[str, Any]) -> bool:
    """True when the request asks Stripe to validate the tax location now."""
    return (params.get("tax") or {}).get("validate_location") == "immediately"


def customer_tax(cus: dict[str, Any]) -> dict[str, Any]:
    """The customer's `tax` hash: whether automatic tax can locate it, and where."""
    source, address = _address(cus)
    if location_problem(cus) is not None or address is None:
        return {"automatic_tax": "unrecognized_location", "ip_address": None, "location": None}
    country = str(address["country"])
    return {
        "automatic_tax": "supported" if country in TEST_RATES else "not_collecting",
        "ip_address": None,
        "location": {"country": country, "source": source, "state": address.get("state")},
    }


def subscription_automatic_tax(
    st: Any, cus: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """A new subscription's `automatic_tax`; refused when asked for a customer without location."""
    enabled = str((params.get("automatic_tax") or {}).get("enabled", "false")).lower() == "true"
    if enabled:
        problem = location_problem(cus)
        if problem is not None:
            raise location_error(problem)
    return {
        "disabled_reason": None,
        "enabled": enabled,
        "liability": {"type": "self"} if enabled else None,
    }


def _tax_rate_id(st: Any, country: str, percent: Decimal) -> str:
    """One tax rate object per country, made the first time it is used (as Stripe Tax does)."""
    for rate in st.table("tax_rate").values():
        if rate["country"] == country:
            return str(rate["id"])
    return str(
        st.put(
            {
                "id": st.new_id("txr"),
                "object": "tax_rate",
                "active": True,
                "country": country,
                "display_name": "Sandbox test tax (TEST DATA, not a real rate)",
                "inclusive": False,
                "percentage": float(percent),
                "effective_percentage": float(percent),
                "livemode": False,
            }
        )["id"]
    )


def _reason(cus: dict[str, Any], country: str) -> str:
    ids = cus.get("_tax_ids") or []
    if (
        country in EU_COUNTRIES
        and country != ACCOUNT_COUNTRY
        and any(t.get("type") == "eu_vat" for t in ids)
    ):
        return "reverse_charge"
    return "standard_rated" if country in TEST_RATES else "not_collecting"


def line_tax(amount: int, percent: Decimal) -> int:
    """A line's tax in cents: exact product, rounded half away from zero to the cent."""
    return int((Decimal(amount) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def apply(st: Any, inv: dict[str, Any], sub: dict[str, Any] | None) -> None:
    """Set each line's `taxes` and the invoice's `automatic_tax` from the subscription's setting."""
    enabled = bool(sub and (sub.get("automatic_tax") or {}).get("enabled"))
    if not enabled:
        return
    cus = st.table("customer")[inv["customer"]]
    problem = location_problem(cus)
    inv["automatic_tax"] = {
        "disabled_reason": None,
        "enabled": True,
        "liability": {"type": "self", "account": None},
        "provider": "stripe",
        "status": "requires_location_inputs" if problem else "complete",
    }
    _, address = _address(cus)
    for line in inv["lines"]["data"]:
        if problem or address is None:
            line["taxes"] = []
            continue
        country = str(address["country"])
        reason = _reason(cus, country)
        percent = TEST_RATES.get(country, Decimal(0)) if reason == "standard_rated" else Decimal(0)
        line["taxes"] = [
            {
                "amount": line_tax(int(line["amount"]), percent),
                "tax_behavior": "exclusive",
                "tax_rate_details": {"tax_rate": _tax_rate_id(st, country, percent)},
                "taxability_reason": reason,
                "taxable_amount": int(line["amount"]) if reason == "standard_rated" else 0,
                "type": "tax_rate_details",
            }
        ]


def totals(inv: dict[str, Any]) -> int:
    """The invoice's `total_taxes` (aggregated per tax rate) from its lines; the tax in cents."""
    by_rate: dict[tuple[str, str], dict[str, Any]] = {}
    for line in inv["lines"]["data"]:
        for tax in line.get("taxes") or []:
            key = (tax["tax_rate_details"]["tax_rate"], tax["taxability_reason"])
            agg = by_rate.setdefault(key, {**tax, "amount": 0, "taxable_amount": 0})
            agg["amount"] += int(tax["amount"])
            agg["taxable_amount"] += int(tax["taxable_amount"] or 0)
    inv["total_taxes"] = list(by_rate.values())
    return sum(int(t["amount"]) for t in inv["total_taxes"])
