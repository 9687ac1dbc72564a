"""Customers and card payment methods (Stripe's documented test tokens and card numbers)."""

from __future__ import annotations

import copy
from typing import Any

import stripe
import stripe.params as P

from .. import tax
from ..paging import list_page
from ..router import Ctx, route
from ..shapes import skeleton
from ..store import SandboxState
from ..wire import StripeError, list_object, matches_search, parse_search_query, search_object
from .events import apply_metadata, emit

# number -> (brand, charge outcome); outcome None = succeeds, else decline_code
CARDS: dict[str, tuple[str, str | None, bool]] = {
    # number: (brand, decline_code on charge, declines already when attached)
    "4242424242424242": ("visa", None, False),
    "4000056655665556": ("visa", None, False),
    "5555555555554444": ("mastercard", None, False),
    "378282246310005": ("amex", None, False),
    "6011111111111117": ("discover", None, False),
    "4000000000000341": ("visa", "generic_decline", False),
    "4000000000009995": ("visa", "insufficient_funds", True),
    "4000000000000002": ("visa", "generic_decline", True),
    "4000000000009987": ("visa", "lost_card", True),
    "4000000000000069": ("visa", "expired_card", True),
}
TOKENS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_visa_debit": "4000056655665556",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_amex": "378282246310005",
    "pm_card_discover": "6011111111111117",
    "pm_card_chargeCustomerFail": "4000000000000341",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedLostCard": "4000000000009987",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
}
DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "lost_card": "Your card was declined.",
    "expired_card": "Your card has expired.",
}


def card_error(decline_code: str, *, payment_method: str | None = None) -> StripeError:
    code = "expired_card" if decline_code == "expired_card" else "card_declined"
    return StripeError(
        402,
        DECLINE_MESSAGES.get(decline_code, "Your card was declined."),
        code=code,
        decline_code=decline_code,
    )


# ---- customers ---------------------------------------------------------------------------------


@route("POST", "/v1/customers", P.CustomerCreateParams)
def create_customer(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    st = ctx.state
    # tax[validate_location]=immediately: a location Stripe Tax cannot use is refused and no
    # customer is created (tax.py cites the page).
    problem = tax.location_problem(
        {"address": params.get("address") or None, "shipping": params.get("shipping") or None}
    )
    if tax.validate_requested(params) and problem is not None:
        raise tax.location_error(problem)
    clock = params.get("test_clock") or None
    now = st.real_now()
    if clock:
        c = st.get("test_helpers.test_clock", clock, "test_clock")
        now = c["frozen_time"]
    cus = st.create(
        stripe.Customer,
        "cus",
        object="customer",
        created=now,
        email=params.get("email") or None,
        name=params.get("name") or None,
        description=params.get("description") or None,
        phone=params.get("phone") or None,
        metadata=dict(params.get("metadata") or {}),
        test_clock=clock,
        balance=params.get("balance", 0),
        currency=None,
        delinquent=False,
        invoice_prefix=f"{st.data.seq:04X}{st.rng.randint(0, 0xFFFF):04X}",
        invoice_settings={
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        preferred_locales=params.get("preferred_locales", []),
        tax_exempt=params.get("tax_exempt", "none"),
        next_invoice_sequence=1,
    )
    cus["address"] = _address(params.get("address"))
    cus["shipping"] = params.get("shipping") or None
    # Tax ids given at creation (docs.stripe.com/api/customers/create, `tax_id_data`); listed by
    # GET /v1/customers/{id}/tax_ids and used for reverse charge (tax.py).
    cus["_tax_ids"] = [_tax_id(st, cus["id"], d, now) for d in params.get("tax_id_data") or []]
    cus.pop("subscriptions", None)
    cus.pop("sources", None)
    cus.pop("tax_ids", None)
    cus.pop("tax", None)
    cus.pop("cash_balance", None)
    cus.pop("invoice_credit_balance", None)
    if params.get("payment_method"):
        attach(st, params["payment_method"], cus["id"], emit_time=now)
    inv = params.get("invoice_settings") or {}
    if inv.get("default_payment_method"):
        _set_default_pm(st, cus, inv["default_payment_method"])
    emit(st, "customer.created", cus, created=now)
    return cus


def _set_default_pm(st: SandboxState, cus: dict[str, Any], pm_id: str) -> None:
    if pm_id == "":
        cus["invoice_settings"]["default_payment_method"] = None
        return
    pm = st.get("payment_method", pm_id, "invoice_settings[default_payment_method]")
    if pm.get("customer") != cus["id"]:
        raise StripeError(
            400,
            f"The customer does not have a payment method with the ID {pm_id}. The payment "
            "method must be attached to the customer.",
            param="invoice_settings[default_payment_method]",
            code="resource_missing",
        )
    cus["invoice_settings"]["default_payment_method"] = pm_id


def _address(given: Any) -> dict[str, Any] | None:
    """A customer address with every field Stripe returns (absent ones null)."""
    if not given:
        return None
    keys = ("city", "country", "line1", "line2", "postal_code", "state")
    return {k: (given.get(k) or None) for k in keys}


def _tax_id(st: SandboxState, customer: str, data: dict[str, Any], now: int) -> dict[str, Any]:
    return {
        "id": st.new_id("txi"),
        "object": "tax_id",
        "country": str(data["value"])[:2].upper() if data["type"] == "eu_vat" else None,
        "created": now,
        "customer": customer,
        "livemode": False,
        "type": data["type"],
        "value": data["value"],
        "verification": {"status": "pending", "verified_address": None, "verified_name": None},
    }


@route("GET", "/v1/customers/{id}/tax_ids", P.CustomerListTaxIdsParams)
def list_tax_ids(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    cus = ctx.state.get("customer", id)
    return list_object(list(cus.get("_tax_ids") or []), f"/v1/customers/{id}/tax_ids", params)


@route("POST", "/v1/customers/{id}/tax_ids", P.CustomerCreateTaxIdParams)
def create_tax_id(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    from ..clock import customer_now

    st = ctx.state
    cus = st.get("customer", id)
    made = _tax_id(st, id, params, customer_now(st, id))
    cus.setdefault("_tax_ids", []).append(made)
    return made


@route("GET", "/v1/customers/{id}", P.CustomerRetrieveParams)
def get_customer(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return ctx.state.get("customer", id)


@route("POST", "/v1/customers/{id}", P.CustomerModifyParams)
def update_customer(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    from ..clock import customer_now

    st = ctx.state
    cus = st.get("customer", id)
    before = copy.deepcopy(cus)
    if "address" in params:
        # Validated before anything changes when asked to (tax.py).
        proposed = {**cus, "address": _address(params["address"])}
        problem = tax.location_problem(proposed)
        if tax.validate_requested(params) and problem is not None:
            raise tax.location_error(problem)
        cus["address"] = proposed["address"]
    for k in ("email", "name", "description", "phone"):
        if k in params:
            cus[k] = params[k] or None
    if "metadata" in params:
        apply_metadata(cus, params["metadata"])
    inv = params.get("invoice_settings") or {}
    if "default_payment_method" in inv:
        _set_default_pm(st, cus, inv["default_payment_method"])
    emit(st, "customer.updated", cus, before=before, created=customer_now(st, id))
    return cus


@route("DELETE", "/v1/customers/{id}", P.CustomerDeleteParams)
def delete_customer(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    st = ctx.state
    cus = st.get("customer", id)
    for sub in st.all("subscription"):
        if sub["customer"] == id and sub["status"] not in ("canceled", "incomplete_expired"):
            from .subscriptions import cancel_subscription_now

            cancel_subscription_now(st, sub, reason="cancellation_requested")
    emit(st, "customer.deleted", cus)
    cus["deleted"] = True
    return {"id": id, "object": "customer", "deleted": True}


@route("GET", "/v1/customers", P.CustomerListParams)
def list_customers(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    # docs.stripe.com/api/customers/list: email, test_clock and `created` (paging.py).
    def match(c: dict[str, Any]) -> bool:
        if params.get("email") and c.get("email") != params["email"]:
            return False
        return not (params.get("test_clock") and c.get("test_clock") != params["test_clock"])

    return list_page(ctx.state, "customer", "/v1/customers", params, match)


@route("GET", "/v1/customers/search", P.CustomerSearchParams)
def search_customers(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    clauses = parse_search_query(params["query"])
    items = [c for c in ctx.state.all("customer") if matches_search(c, clauses)]
    return search_object(items, "/v1/customers/search", params)


# ---- payment methods ---------------------------------------------------------------------------


def _card_pm(
    st: SandboxState,
    number: str,
    exp_month: int = 12,
    exp_year: int = 2034,
    created: int | None = None,
) -> dict[str, Any]:
    number = number.replace(" ", "")
    if number not in CARDS:
        if len(number) < 12 or not number.isdigit():
            raise StripeError(
                402, "Your card number is incorrect.", code="incorrect_number", param="card[number]"
            )
    brand, _, _ = CARDS.get(number, ("visa", None, False))
    card = skeleton(stripe.PaymentMethod.Card)
    card.update(
        brand=brand,
        display_brand=brand,
        country="US",
        exp_month=exp_month,
        exp_year=exp_year,
        funding="credit",
        last4=number[-4:],
        fingerprint=f"fp{number[-8:]}",
        checks={
            "address_line1_check": None,
            "address_postal_code_check": None,
            "cvc_check": "pass",
        },
        networks={"available": [brand], "preferred": None},
        three_d_secure_usage={"supported": True},
        regulated_status="unregulated",
    )
    pm = st.create(
        stripe.PaymentMethod,
        "pm",
        object="payment_method",
        type="card",
        card=card,
        created=created or st.real_now(),
        customer=None,
        metadata={},
        billing_details=skeleton(stripe.PaymentMethod.BillingDetails),
        allow_redisplay="unspecified",
    )
    for k in list(pm):
        if pm[k] is None and k not in ("customer", "customer_account", "radar_options"):
            # type-specific sub-objects (us_bank_account, sepa_debit, ...) are absent for cards
            if k in _TYPE_KEYS:
                pm.pop(k)
    pm["_number"] = number
    return pm


_TYPE_KEYS = {
    n
    for n in stripe.PaymentMethod.__annotations__
    if n
    not in {
        "billing_details",
        "card",
        "created",
        "customer",
        "customer_account",
        "id",
        "livemode",
        "metadata",
        "object",
        "type",
        "allow_redisplay",
        "radar_options",
    }
    and n[0] != "_"
    and n != "OBJECT_NAME"
}


def resolve_pm(st: SandboxState, pm_id: str, param: str = "payment_method") -> dict[str, Any]:
    """A payment method by id; Stripe's test tokens (`pm_card_visa`) mint a fresh one."""
    if pm_id in TOKENS:
        return _card_pm(st, TOKENS[pm_id])
    return st.get("payment_method", pm_id, param)


def card_outcome(pm: dict[str, Any] | None) -> str | None:
    """None if a charge on `pm` succeeds, else the decline code."""
    if pm is None:
        return "no_payment_method"
    return CARDS.get(pm.get("_number", ""), ("visa", None, False))[1]


def attach(
    st: SandboxState, pm_id: str, customer_id: str, emit_time: int | None = None
) -> dict[str, Any]:
    cus = st.get("customer", customer_id, "customer")
    pm = resolve_pm(st, pm_id)
    if pm.get("customer") and pm["customer"] != customer_id:
        raise StripeError(
            400,
            "The payment method you provided has already been attached to a customer.",
            param="payment_method",
        )
    _, decline, declines_on_attach = CARDS.get(pm.get("_number", ""), ("visa", None, False))
    if decline and declines_on_attach:
        raise card_error(decline)
    pm["customer"] = cus["id"]
    emit(st, "payment_method.attached", pm, created=emit_time)
    return pm


@route("POST", "/v1/payment_methods", P.PaymentMethodCreateParams)
def create_pm(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("type") != "card":
        raise StripeError(400, "The sandbox only supports type=card payment methods.", param="type")
    card = params.get("card") or {}
    if card.get("token"):
        raise StripeError(
            400,
            "Card tokens are not supported by the sandbox; use "
            "card[number] or a pm_card_* test payment method.",
            param="card[token]",
        )
    if not card.get("number"):
        raise StripeError(
            400,
            "Missing required param: card[number].",
            param="card[number]",
            code="parameter_missing",
        )
    pm = _card_pm(
        ctx.state,
        str(card["number"]),
        int(card.get("exp_month") or 12),
        int(card.get("exp_year") or 2034),
    )
    if params.get("metadata"):
        apply_metadata(pm, params["metadata"])
    return pm


@route("GET", "/v1/payment_methods/{id}", P.PaymentMethodRetrieveParams)
def get_pm(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return resolve_pm(ctx.state, id, "id")


@route("POST", "/v1/payment_methods/{id}/attach", P.PaymentMethodAttachParams)
def attach_pm(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return attach(ctx.state, id, params["customer"])


@route("POST", "/v1/payment_methods/{id}/detach", P.PaymentMethodDetachParams)
def detach_pm(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    st = ctx.state
    pm = st.get("payment_method", id)
    if not pm.get("customer"):
        raise StripeError(
            400,
            "The payment method you provided is not attached to a customer "
            "so detachment is impossible.",
            param="payment_method",
        )
    cus = st.table("customer").get(pm["customer"])
    if cus and cus["invoice_settings"]["default_payment_method"] == id:
        cus["invoice_settings"]["default_payment_method"] = None
    pm["customer"] = None
    emit(st, "payment_method.detached", pm)
    return pm


@route("GET", "/v1/payment_methods", P.PaymentMethodListParams)
def list_pms(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    def match(p: dict[str, Any]) -> bool:
        if params.get("customer") and p.get("customer") != params["customer"]:
            return False
        return not (params.get("type") and p["type"] != params["type"])

    return list_page(ctx.state, "payment_method", "/v1/payment_methods", params, match)


@route("GET", "/v1/customers/{customer}/payment_methods", P.CustomerListPaymentMethodsParams)
def list_customer_pms(ctx: Ctx, params: dict[str, Any], customer: str) -> dict[str, Any]:
    ctx.state.get("customer", customer)

    def match(p: dict[str, Any]) -> bool:
        if p.get("customer") != customer:
            return False
        return not (params.get("type") and p["type"] != params["type"])

    url = f"/v1/customers/{customer}/payment_methods"
    return list_page(ctx.state, "payment_method", url, params, match)
