"""Invoice endpoints: retrieve/list/lines, pay, void, mark_uncollectible, finalize, preview;
invoice items."""

from __future__ import annotations

import copy
from typing import Any

import stripe
import stripe.params as P

from .. import billing_engine as eng
from ..clock import customer_now
from ..paging import list_page
from ..router import Ctx, route
from ..wire import StripeError, list_object
from .customers import resolve_pm
from .events import emit
from .subscriptions import (
    interval_switches,
    metered_change_items,
    proration_items,
    restart_switched_items,
)

INV = "invoice"


def _public(inv: dict[str, Any]) -> dict[str, Any]:
    return inv


@route("GET", "/v1/invoices/{id}", P.InvoiceRetrieveParams)
def get_invoice(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    inv = ctx.state.get(INV, id)
    if inv["status"] == "draft":
        eng.refresh_metered_lines(ctx.state, inv)
    return inv


@route("GET", "/v1/invoices", P.InvoiceListParams)
def list_invoices(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    # docs.stripe.com/api/invoices/list: filters customer, subscription, status,
    # collection_method and `created`; applied lazily while the page is walked (paging.py).
    wanted = {
        "customer": params.get("customer"),
        "_subscription": params.get("subscription"),
        "status": params.get("status"),
        "collection_method": params.get("collection_method"),
    }
    wanted = {k: v for k, v in wanted.items() if v}

    def match(inv: dict[str, Any]) -> bool:
        return all(inv.get(k) == v for k, v in wanted.items())

    return list_page(ctx.state, INV, "/v1/invoices", params, match)


@route("GET", "/v1/invoices/{id}/lines", P.InvoiceListLinesParams)
def invoice_lines(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    inv = ctx.state.get(INV, id)
    return list_object(copy.deepcopy(inv["lines"]["data"]), f"/v1/invoices/{id}/lines", params)


@route("POST", "/v1/invoices/{id}/pay", P.InvoicePayParams)
def pay_invoice(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    st = ctx.state
    inv = st.get(INV, id)
    pm = None
    if params.get("payment_method"):
        pm = resolve_pm(st, params["payment_method"])
    if params.get("paid_out_of_band"):
        eng.mark_paid(st, inv, customer_now(st, inv["customer"]))
        return inv
    eng.pay_now(st, inv, pm)
    return inv


@route("POST", "/v1/invoices/{id}/void", P.InvoiceVoidInvoiceParams)
def void_invoice(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    inv = ctx.state.get(INV, id)
    eng.void(ctx.state, inv, customer_now(ctx.state, inv["customer"]))
    return inv


@route("POST", "/v1/invoices/{id}/mark_uncollectible", P.InvoiceMarkUncollectibleParams)
def mark_uncollectible(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    inv = ctx.state.get(INV, id)
    eng.mark_uncollectible(ctx.state, inv, customer_now(ctx.state, inv["customer"]))
    return inv


@route("POST", "/v1/invoices/{id}/finalize", P.InvoiceFinalizeInvoiceParams)
def finalize_invoice(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    inv = ctx.state.get(INV, id)
    if "auto_advance" in params:
        inv["auto_advance"] = bool(params["auto_advance"])
    eng.finalize(
        ctx.state, inv, customer_now(ctx.state, inv["customer"]), attempt=bool(inv["auto_advance"])
    )
    return inv


@route("POST", "/v1/invoices/create_preview", P.InvoiceCreatePreviewParams)
def create_preview(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    """The next invoice of a subscription, with the prorations a proposed change would make."""
    st = ctx.state
    sub_id = params.get("subscription")
    if not sub_id:
        raise StripeError(
            400,
            "The sandbox previews existing subscriptions only: pass `subscription`.",
            param="subscription",
        )
    sub = st.get("subscription", sub_id, "subscription")
    if params.get("customer") and params["customer"] != sub["customer"]:
        raise StripeError(
            400, "The subscription does not belong to this customer.", param="customer"
        )
    now = customer_now(st, sub["customer"])
    details = params.get("subscription_details") or {}
    changes = details.get("items") or []
    pdate = details.get("proration_date", now)
    behavior = details.get("proration_behavior", "create_prorations")
    trial = sub["status"] == "trialing"
    shadow = copy.deepcopy(sub)
    prorations = (
        proration_items(st, shadow, changes, pdate)
        if changes and behavior != "none" and not trial
        else []
    )
    # The preview shows a replaced metered price's usage so far as its own line, like the update.
    usage = metered_change_items(st, shadow, changes, now, behavior) if changes else []
    switched = {i["id"] for i in interval_switches(st, shadow, changes)} if changes else set()
    if changes:
        _apply_shadow(st, shadow, changes, now)
    start, end = eng.period_of(shadow)
    lines = eng.pending_item_lines(st, sub["customer"], sub["id"], None)
    for p in usage + prorations:
        line = eng._line(
            st,
            amount=p["amount"],
            price=p["price"],
            quantity=p["quantity"],
            start=p["period"]["start"],
            end=p["period"]["end"],
            sub_id=sub["id"],
            si_id=None,
            description=p["description"],
            proration=p.get("proration", True),
        )
        lines.append(line)
    period = (start, end)
    if switched and not trial:
        # The invoice the switch issues at once: the switched items' new full periods beside
        # the credits and usage so far, as the update does (interval_switches).
        restart_switched_items(st, shadow, switched, now)
        items = [i for i in shadow["items"]["data"] if i["id"] in switched]
        lines += eng.licensed_lines_own_periods(st, shadow, items)
        period = (now, now)
    elif behavior != "always_invoice" or not changes:
        # The next renewal bills the items due then: in a mixed interval subscription the
        # monthly items alone until the yearly ones align (docs.stripe.com/billing/
        # subscriptions/mixed-interval).
        due = [i for i in shadow["items"]["data"] if int(i["current_period_end"]) <= end]
        for item in due:
            next_end = eng.item_period_end(shadow, item, end)
            lines += eng.licensed_lines(st, shadow, end, next_end, [item])
        if not trial:
            lines += eng.metered_lines(st, shadow, start, end, due)
    cus = st.table("customer")[sub["customer"]]
    seq_before = st.data.seq
    inv = eng.build_preview(st, customer=cus["id"], sub=shadow, lines=lines, period=period, now=now)
    inv["parent"]["subscription_details"]["subscription_proration_date"] = (
        pdate if prorations else None
    )
    del seq_before
    return inv


def _apply_shadow(st: Any, shadow: dict[str, Any], changes: list[dict[str, Any]], now: int) -> None:
    data = shadow["items"]["data"]
    for ch in changes:
        item = next((it for it in data if it["id"] == ch.get("id")), None)
        if item is None:
            if ch.get("price"):
                price = st.get("price", ch["price"])
                data.append(
                    {
                        "id": "si_preview",
                        "price": copy.deepcopy(price),
                        "quantity": ch.get("quantity", 1),
                        "current_period_start": data[0]["current_period_start"],
                        "current_period_end": data[0]["current_period_end"],
                    }
                )
            continue
        if ch.get("deleted"):
            data.remove(item)
            continue
        if ch.get("price") and ch["price"] != item["price"]["id"]:
            item["price"] = copy.deepcopy(st.get("price", ch["price"]))
            item["_usage_start"] = now
        if ch.get("quantity") not in (None, ""):
            item["quantity"] = int(ch["quantity"])


# ---- invoice items ---------------------------------------------------------------------------


@route("GET", "/v1/invoiceitems", P.InvoiceItemListParams)
def list_invoice_items(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    def match(ii: dict[str, Any]) -> bool:
        if params.get("customer") and ii["customer"] != params["customer"]:
            return False
        if params.get("invoice") and ii.get("invoice") != params["invoice"]:
            return False
        return not (params.get("pending") and ii.get("invoice"))

    return list_page(ctx.state, "invoiceitem", "/v1/invoiceitems", params, match)


@route("GET", "/v1/invoiceitems/{id}", P.InvoiceItemRetrieveParams)
def get_invoice_item(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return ctx.state.get("invoiceitem", id)


@route("POST", "/v1/invoiceitems", P.InvoiceItemCreateParams)
def create_invoice_item(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    """A one-off charge (or credit) on a customer: docs.stripe.com/api/invoiceitems/create.

    "If no invoice is specified, the item will be on the next invoice created for the customer
    specified" (a subscription's next invoice included: docs.stripe.com/billing/invoices/
    subscription, "Adding upcoming invoice items"). Supported: `amount` with `currency`, or
    `pricing.price` with `quantity` for a per-unit price; `description`, `period`,
    `subscription`, `metadata`. The docs are silent on a tiered price here: the sandbox refuses
    it (the stricter behaviour). Attaching to a given `invoice` is not implemented (refused).
    """
    st = ctx.state
    cus = st.get("customer", params["customer"], "customer")
    if params.get("invoice"):
        raise StripeError(
            400, "The sandbox does not attach invoice items to an invoice.", param="invoice"
        )
    price_id = (params.get("pricing") or {}).get("price") or params.get("price")
    price: dict[str, Any] | None = None
    quantity = int(params.get("quantity") or 1)
    if price_id:
        price = st.get("price", price_id, "pricing[price]")
        if price.get("billing_scheme") == "tiered" or price.get("unit_amount") is None:
            raise StripeError(
                400, "Invoice items need a price with a unit amount.", param="pricing"
            )
        amount = int(price["unit_amount"]) * quantity
        currency = price["currency"]
    else:
        if params.get("amount") is None or not params.get("currency"):
            raise StripeError(
                400, "Missing required param: amount (with currency).", param="amount"
            )
        amount, currency = int(params["amount"]), str(params["currency"]).lower()
    now = customer_now(st, cus["id"])
    period = params.get("period") or {}
    sub_id = params.get("subscription")
    if sub_id:
        st.get("subscription", sub_id, "subscription")
    ii = st.create(
        stripe.InvoiceItem,
        "ii",
        object="invoiceitem",
        amount=amount,
        currency=currency,
        customer=cus["id"],
        date=now,
        description=params.get("description"),
        discountable=price is not None,
        discounts=[],
        invoice=None,
        livemode=False,
        metadata=dict(params.get("metadata") or {}),
        period={"start": int(period.get("start") or now), "end": int(period.get("end") or now)},
        proration=False,
        quantity=quantity,
        subscription=sub_id,
        test_clock=cus.get("test_clock"),
        tax_rates=[],
        pricing=None
        if price is None
        else {
            "type": "price_details",
            "price_details": {"price": price["id"], "product": price["product"]},
            "unit_amount_decimal": price.get("unit_amount_decimal"),
        },
        parent=None
        if not sub_id
        else {
            "type": "subscription_details",
            "subscription_details": {"subscription": sub_id, "subscription_item": None},
        },
    )
    ii.pop("deleted", None)
    emit(st, "invoiceitem.created", ii, created=now)
    return ii
