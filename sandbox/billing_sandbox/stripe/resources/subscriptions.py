"""Subscriptions: creation and first invoice, trials, renewals, plan changes with prorations,
cancellation."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe
import stripe.params as P

from .. import billing_engine as eng
from .. import tax
from ..clock import DAY, customer_now
from ..paging import list_page
from ..router import Ctx, route
from ..shapes import build
from ..store import SandboxState
from ..wire import StripeError, matches_search, parse_search_query, search_object
from .catalog import amount_for
from .customers import card_error, card_outcome, resolve_pm
from .events import apply_metadata, emit

SUBS = "subscription"
BILLING_MODES = ("classic", "flexible")
RESUME_BEHAVIORS = ("resume_on_payment_attempt", "resume_on_payment_success")


def _new_item(
    st: SandboxState, sub_id: str, spec: dict[str, Any], now: int, i: int
) -> dict[str, Any]:
    if not spec.get("price"):
        raise StripeError(
            400,
            f"Missing required param: items[{i}][price].",
            param=f"items[{i}][price]",
            code="parameter_missing",
        )
    price = st.get("price", spec["price"], f"items[{i}][price]")
    if price["type"] != "recurring":
        raise StripeError(
            400,
            "The price specified is set to `type=one_time` but this field "
            "only accepts prices with `type=recurring`.",
            param=f"items[{i}][price]",
        )
    if not price["active"]:
        raise StripeError(
            400,
            "The price specified is inactive. This field only accepts active prices.",
            param=f"items[{i}][price]",
        )
    metered = price["recurring"]["usage_type"] == "metered"
    if metered and spec.get("quantity") not in (None, ""):
        raise StripeError(
            400,
            "Quantity should not be specified where usage_type is "
            "`metered`. Remove quantity from `items[0]`.",
            param=f"items[{i}][quantity]",
        )
    return build(
        stripe.SubscriptionItem,
        id=st.new_id("si"),
        object="subscription_item",
        created=now,
        metadata=dict(spec.get("metadata") or {}),
        price=copy.deepcopy(price),
        quantity=None if metered else int(spec.get("quantity") or 1),
        subscription=sub_id,
        discounts=[],
        tax_rates=[],
        billing_thresholds=None,
        plan=None,
        current_period_start=now,
        current_period_end=now,
    )


def _billing_mode(params: dict[str, Any]) -> str:
    """The subscription's billing mode: `flexible` unless `billing_mode[type]=classic`.

    Since API version 2025-09-30.clover new subscriptions default to flexible
    (docs.stripe.com/changelog/clover/2025-09-30/billing-mode-default-flexible); the modes bill
    a replaced metered price differently (docs.stripe.com/billing/subscriptions/billing-mode/
    compare, docs.stripe.com/billing/subscriptions/usage-based/manage-billing-setup).
    """
    mode = (params.get("billing_mode") or {}).get("type") or "flexible"
    if mode not in BILLING_MODES:
        raise StripeError(
            400,
            f"Invalid billing_mode[type]: must be one of {', '.join(BILLING_MODES)}",
            param="billing_mode[type]",
        )
    return str(mode)


def _check_mixed_intervals(items: list[dict[str, Any]], mode: str) -> None:
    """Items on different intervals need flexible billing mode.

    "Mixed interval subscriptions must use flexible billing mode"
    (docs.stripe.com/billing/subscriptions/mixed-interval); a classic subscription "must first
    set its billing_mode to flexible" (docs.stripe.com/changelog/basil/2025-07-30/
    support-mixed-intervals). Classic keeps the older rule: one interval for every item.
    """
    if mode != "flexible" and eng.mixed_intervals(items):
        raise StripeError(
            400,
            "Mixed interval subscriptions must use flexible billing mode: all prices on a "
            "classic subscription must have the same recurring interval.",
            param="items",
        )


def _strip_deleted(obj: dict[str, Any]) -> dict[str, Any]:
    obj.pop("deleted", None)
    return obj


@route("POST", "/v1/subscriptions", P.SubscriptionCreateParams)
def create_subscription(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    st = ctx.state
    cus = st.get("customer", params["customer"], "customer")
    now = customer_now(st, cus["id"])
    specs = params.get("items") or []
    if not specs:
        raise StripeError(
            400, "Missing required param: items.", param="items", code="parameter_missing"
        )
    behavior = params.get("payment_behavior", "allow_incomplete")
    pm_id = params.get("default_payment_method") or None
    if pm_id:
        pm = resolve_pm(st, pm_id, "default_payment_method")
        if pm.get("customer") != cus["id"]:
            raise StripeError(
                400,
                "The customer does not have a payment method with the ID "
                f"{pm_id}. The payment method must be attached to the customer.",
                param="default_payment_method",
            )
    trial_end = params.get("trial_end")
    if trial_end == "now":
        trial_end = None
    if params.get("trial_period_days"):
        trial_end = now + int(params["trial_period_days"]) * DAY
    if trial_end is not None and trial_end <= now:
        raise StripeError(
            400,
            "Invalid timestamp: must be an integer Unix timestamp in the future.",
            param="trial_end",
        )
    # Refused before anything exists when Stripe Tax cannot locate the customer (tax.py).
    automatic_tax = tax.subscription_automatic_tax(st, cus, params)
    sub_id = st.new_id("sub")
    items = [_new_item(st, sub_id, s, now, i) for i, s in enumerate(specs)]
    currencies = {it["price"]["currency"] for it in items}
    mode = _billing_mode(params)
    if len(currencies) > 1:
        raise StripeError(
            400, "All prices on a subscription must have the same currency.", param="items"
        )
    _check_mixed_intervals(items, mode)
    anchor_day = datetime.fromtimestamp(now, UTC).day
    sub = st.create(
        stripe.Subscription,
        "sub",
        id=sub_id,
        object=SUBS,
        automatic_tax=automatic_tax,
        billing_cycle_anchor=trial_end or now,
        billing_cycle_anchor_config=None,
        billing_mode={
            "type": mode,
            "flexible": {"proration_discounts": "included"} if mode == "flexible" else None,
            "updated_at": None,
        },
        billing_schedules=[],
        cancel_at=params.get("cancel_at"),
        cancel_at_period_end=bool(params.get("cancel_at_period_end", False)),
        collection_method=params.get("collection_method", "charge_automatically"),
        created=now,
        currency=currencies.pop(),
        customer=cus["id"],
        days_until_due=params.get("days_until_due"),
        default_payment_method=pm_id,
        description=params.get("description") or None,
        discounts=[],
        invoice_settings={"account_tax_ids": None, "issuer": {"type": "self"}},
        items={
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        metadata=dict(params.get("metadata") or {}),
        payment_settings={
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        start_date=now,
        status="incomplete",
        test_clock=cus.get("test_clock"),
        trial_end=trial_end,
        trial_start=now if trial_end else None,
        trial_settings={
            "end_behavior": {
                "missing_payment_method": (
                    (params.get("trial_settings") or {}).get("end_behavior") or {}
                ).get("missing_payment_method", "create_invoice")
            }
        },
    )
    _strip_deleted(sub)
    sub["_anchor_day"] = (
        datetime.fromtimestamp(trial_end or now, UTC).day if trial_end else anchor_day
    )
    start = now
    if trial_end:
        eng.set_period(sub, start, trial_end)
    else:
        # Each item's first period lasts its own interval; the first invoice bills every
        # licensed item for it (docs.stripe.com/billing/subscriptions/mixed-interval: the
        # subscription "bills for them on the first invoice").
        eng.start_item_periods(sub, start)
    lines = [] if trial_end else eng.licensed_lines_own_periods(st, sub)
    total = sum(line["amount"] for line in lines)
    if behavior == "error_if_incomplete" and total > 0:
        outcome = card_outcome(eng.default_pm(st, sub, cus["id"]))
        if outcome is not None:
            del st.table(SUBS)[sub_id]
            raise card_error(outcome if outcome != "no_payment_method" else "generic_decline")
    if trial_end:
        sub["status"] = "trialing"
    emit(st, "customer.subscription.created", sub, created=now, request_id=ctx.request_id)
    before = copy.deepcopy(sub)
    inv = eng.new_invoice(
        st,
        customer=cus["id"],
        sub=sub,
        lines=lines,
        billing_reason="subscription_create",
        period=(start, start),
        now=now,
    )
    sub["latest_invoice"] = inv["id"]
    # a successful first payment moves incomplete -> active (mark_paid emits the update)
    eng.finalize(st, inv, now, attempt=behavior != "default_incomplete")
    del before
    return sub


@route("GET", "/v1/subscriptions/{id}", P.SubscriptionRetrieveParams)
def get_subscription(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    return ctx.state.get(SUBS, id)


@route("GET", "/v1/subscriptions", P.SubscriptionListParams)
def list_subscriptions(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    # docs.stripe.com/api/subscriptions/list: "By default, returns a list of subscriptions that
    # have not been canceled"; `status=all` returns every status, `status=canceled` only those.
    # Unlike search (docs.stripe.com/search: data can take up to a minute to be searchable), a
    # list reads current state, so onboarding uses it to find a subscription made just before.
    # `created` "Only return subscriptions that were created during the given date interval"
    # (same page): paging.py applies it with the cursor; the rest is checked lazily per object.
    status = params.get("status")
    period_bounds = params.get("current_period_start")
    end_bounds = params.get("current_period_end")

    def match(s: dict[str, Any]) -> bool:
        if status and status != "all":
            if s["status"] != status:
                return False
        elif not status and s["status"] in ("canceled", "incomplete_expired"):
            return False
        if params.get("customer") and s["customer"] != params["customer"]:
            return False
        if params.get("price") and not any(
            i["price"]["id"] == params["price"] for i in s["items"]["data"]
        ):
            return False
        if params.get("test_clock") and s.get("test_clock") != params["test_clock"]:
            return False
        # docs.stripe.com/api/subscriptions/list: `current_period_start` "Only return
        # subscriptions whose maximum item current_period_start falls within the given date
        # interval" (an integer is an exact match; gt/gte/lt/lte bound it).
        if end_bounds is not None and not _in_interval(
            # Same page: `current_period_end` "Only return subscriptions whose minimum item
            # current_period_end falls within the given date interval".
            min(i["current_period_end"] for i in s["items"]["data"]),
            end_bounds,
        ):
            return False
        return period_bounds is None or _in_interval(
            max(i["current_period_start"] for i in s["items"]["data"]), period_bounds
        )

    return list_page(ctx.state, SUBS, "/v1/subscriptions", params, match)


def _in_interval(value: int, bounds: Any) -> bool:
    if not isinstance(bounds, dict):
        return value == int(bounds)
    checks = {
        "gt": lambda b: value > b,
        "gte": lambda b: value >= b,
        "lt": lambda b: value < b,
        "lte": lambda b: value <= b,
    }
    return all(checks[k](int(v)) for k, v in bounds.items() if k in checks)


@route("GET", "/v1/subscriptions/search", P.SubscriptionSearchParams)
def search_subscriptions(ctx: Ctx, params: dict[str, Any]) -> dict[str, Any]:
    clauses = parse_search_query(params["query"])
    items = [s for s in ctx.state.all(SUBS) if matches_search(s, clauses)]
    return search_object(items, "/v1/subscriptions/search", params)


# ---- prorations --------------------------------------------------------------------------------


def proration_items(
    st: SandboxState, sub: dict[str, Any], changes: list[dict[str, Any]], proration_date: int
) -> list[dict[str, Any]]:
    """Unsaved invoice items crediting unused time and charging remaining time.

    Each item prorates over its own current period (a yearly item over its year). An item
    whose price moves to another interval gets the credit for its unused time only: its new
    price starts a full period of its own at the change (see `interval_switches`).
    """
    sub_start, sub_end = eng.period_of(sub)
    if not (sub_start <= proration_date <= sub_end):
        raise StripeError(
            400, "proration_date must be within the current billing period.", param="proration_date"
        )
    out: list[dict[str, Any]] = []
    by_id = {i["id"]: i for i in sub["items"]["data"]}
    switched = {i["id"] for i in interval_switches(st, sub, changes)}
    for ch in changes:
        item = by_id.get(ch.get("id", ""))
        start, end = (
            (int(item["current_period_start"]), int(item["current_period_end"]))
            if item
            else (sub_start, sub_end)
        )
        frac = Decimal(end - proration_date) / Decimal(end - start)
        old_price = st.table("price")[item["price"]["id"]] if item else None
        new_price = st.table("price").get(ch.get("price") or "") or old_price
        if ch.get("deleted"):
            new_price = None
        old_qty = int(item.get("quantity") or 1) if item else 0
        new_qty = int(ch.get("quantity") or old_qty or 1)
        for price, qty, sign, label in (
            (old_price, old_qty, -1, "Unused time on"),
            (new_price, new_qty, 1, "Remaining time on"),
        ):
            if price is None or price["recurring"]["usage_type"] == "metered":
                continue
            if price is old_price and new_price is old_price and qty == new_qty and sign == 1:
                continue
            if sign == -1 and new_price is old_price and old_qty == new_qty:
                continue
            if sign == 1 and item is not None and item["id"] in switched:
                continue  # the new interval's full first period is billed at the change
            amt = (Decimal(amount_for(price, qty)) * frac).quantize(Decimal(1), ROUND_HALF_UP)
            out.append(
                {
                    "price": price,
                    "quantity": qty,
                    "amount": sign * int(amt),
                    "description": f"{label} {qty} × {eng.product_name(st, price)} after "
                    f"{eng._day(proration_date)}",
                    "period": {"start": proration_date, "end": end},
                }
            )
    return out


def interval_switches(
    st: SandboxState, sub: dict[str, Any], changes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The items a change moves to a price on another interval (monthly <-> yearly).

    Stripe documents that "changing to a price with a different billing interval" prorates
    (stripe.com/docs/subscriptions/changing) and that on a different billing
    frequency "the first full period of the new plan begins immediately" and is charged then
    (support.stripe.com/questions/handling-subscription-changes). The mixed interval page
    (docs.stripe.com/billing/subscriptions/mixed-interval) is silent on switching one item's
    interval while the others keep theirs; the sandbox takes the stricter reading: only the
    switched item restarts its period at the change, the credit for its unused time and its
    new full period are invoiced at once, and the other items keep their periods.
    """
    by_id = {i["id"]: i for i in sub["items"]["data"]}
    out = []
    for ch in changes:
        item = by_id.get(ch.get("id") or "")
        if item is None or ch.get("deleted") or not ch.get("price"):
            continue
        new = st.table("price").get(ch["price"])
        if new is None or new["id"] == item["price"]["id"]:
            continue
        if eng.item_interval({"price": new}) == eng.item_interval(item):
            continue
        if "metered" in (new["recurring"]["usage_type"], item["price"]["recurring"]["usage_type"]):
            raise StripeError(
                400,
                "The sandbox switches the interval of licensed prices only (the Stripe docs "
                "do not describe moving metered usage between intervals).",
                param="items",
            )
        out.append(item)
    return out


def restart_switched_items(st: SandboxState, sub: dict[str, Any], ids: set[str], now: int) -> None:
    """Switched items start a full period of their new interval at the change, anchored there."""
    for item in sub["items"]["data"]:
        if item["id"] in ids:
            item["_anchor_day"] = datetime.fromtimestamp(now, UTC).day
            item["current_period_start"] = now
            item["current_period_end"] = eng.item_period_end(sub, item, now)


def metered_change_items(
    st: SandboxState,
    sub: dict[str, Any],
    changes: list[dict[str, Any]],
    now: int,
    behavior: str,
) -> list[dict[str, Any]]:
    """Unsaved invoice items billing a replaced or removed metered price's usage so far.

    Flexible billing mode: "we create an invoice item that bills for previously reported
    metered usage when you remove a metered price from a subscription" (switching price A to B
    on January 16 bills A's usage from January 1 to 16 on that day, and B from January 16 at the
    cycle); `proration_behavior=none` removes the price without billing it. Classic mode reflects
    only usage after the update on future invoices: the usage before it is not billed.
    (docs.stripe.com/billing/subscriptions/usage-based/manage-billing-setup, "Update prices
    mid-cycle"). The docs do not say whether usage reported later for the part before the change
    joins that item: the sandbox fixes its quantity at the change (the stricter behaviour).
    """
    if sub["billing_mode"]["type"] != "flexible" or behavior == "none":
        return []
    if sub["status"] == "trialing":
        return []  # usage during a trial is not billed (no metered line at trial end either)
    by_id = {i["id"]: i for i in sub["items"]["data"]}
    out: list[dict[str, Any]] = []
    for ch in changes:
        item = by_id.get(ch.get("id") or "")
        if item is None:
            continue
        old = st.table("price")[item["price"]["id"]]
        if (old.get("recurring") or {}).get("usage_type") != "metered":
            continue
        if not ch.get("deleted") and (not ch.get("price") or ch["price"] == old["id"]):
            continue
        start = eng.usage_start(sub, item)
        qty = eng.metered_quantity(st, old, sub["customer"], start, now)
        out.append(
            {
                "price": old,
                "quantity": qty,
                "amount": amount_for(old, qty),
                "description": f"{eng.product_name(st, old)} (usage {eng._day(start)} – "
                f"{eng._day(now)}, before the price change)",
                "period": {"start": start, "end": now},
                "proration": False,
            }
        )
    return out


def save_invoice_items(
    st: SandboxState, sub: dict[str, Any], prorations: list[dict[str, Any]], now: int
) -> list[dict[str, Any]]:
    saved = []
    for p in prorations:
        ii = st.create(
            stripe.InvoiceItem,
            "ii",
            object="invoiceitem",
            amount=p["amount"],
            currency=p["price"]["currency"],
            customer=sub["customer"],
            date=now,
            description=p["description"],
            discountable=False,
            discounts=[],
            invoice=None,
            metadata={},
            period=p["period"],
            proration=p.get("proration", True),
            quantity=p["quantity"],
            subscription=sub["id"],
            test_clock=sub.get("test_clock"),
            tax_rates=[],
            pricing={
                "type": "price_details",
                "price_details": {"price": p["price"]["id"], "product": p["price"]["product"]},
                "unit_amount_decimal": p["price"].get("unit_amount_decimal"),
            },
            parent={
                "type": "subscription_details",
                "subscription_details": {"subscription": sub["id"], "subscription_item": None},
            },
        )
        _strip_deleted(ii)
        emit(st, "invoiceitem.created", ii, created=now)
        saved.append(ii)
    return saved


@route("POST", "/v1/subscriptions/{id}", P.SubscriptionModifyParams)
def update_subscription(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    st = ctx.state
    sub = st.get(SUBS, id)
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise StripeError(
            400, "A canceled subscription can only update its cancellation_details and metadata."
        )
    now = customer_now(st, sub["customer"])
    before = copy.deepcopy(sub)
    if "metadata" in params:
        apply_metadata(sub, params["metadata"])
    if "cancel_at_period_end" in params:
        sub["cancel_at_period_end"] = bool(params["cancel_at_period_end"])
        # "For mixed interval subscriptions the existing cancel_at_period_end feature always
        # resolves to the earliest item period end" (docs.stripe.com/changelog/basil/
        # 2025-07-30/cancel-at-enums): period_of is the earliest-ending item's period.
        sub["cancel_at"] = eng.period_of(sub)[1] if sub["cancel_at_period_end"] else None
        sub["canceled_at"] = now if sub["cancel_at_period_end"] else None
    if "default_payment_method" in params:
        pm_id = params["default_payment_method"] or None
        if pm_id:
            pm = resolve_pm(st, pm_id, "default_payment_method")
            if pm.get("customer") != sub["customer"]:
                raise StripeError(
                    400,
                    "The payment method must be attached to the customer.",
                    param="default_payment_method",
                )
        sub["default_payment_method"] = pm_id
    if "trial_end" in params and sub["status"] == "trialing":
        if params["trial_end"] == "now":
            eng_now = now
            sub["trial_end"] = eng_now
            end_trial(st, sub, eng_now)
        else:
            sub["trial_end"] = int(params["trial_end"])
            eng.set_period(sub, eng.period_of(sub)[0], sub["trial_end"])
    if "cancel_at" in params:
        _set_cancel_at(sub, params["cancel_at"], now)
    changes = params.get("items") or []
    if changes:
        behavior = params.get("proration_behavior", "create_prorations")
        pdate = params.get("proration_date", now)
        switched = {i["id"] for i in interval_switches(st, sub, changes)}
        prorations = (
            proration_items(st, sub, changes, pdate)
            if behavior != "none" and sub["status"] != "trialing"
            else []
        )
        usage = metered_change_items(st, sub, changes, now, behavior)
        _apply_item_changes(st, sub, changes, now)
        _check_mixed_intervals(sub["items"]["data"], sub["billing_mode"]["type"])
        saved = save_invoice_items(st, sub, usage + prorations, now)
        if switched and sub["status"] != "trialing":
            restart_switched_items(st, sub, switched, now)
            items = [i for i in sub["items"]["data"] if i["id"] in switched]
            lines = eng.licensed_lines_own_periods(st, sub, items)
            lines += eng.pending_item_lines(st, sub["customer"], sub["id"], None)
            inv = eng.new_invoice(
                st,
                customer=sub["customer"],
                sub=sub,
                lines=lines,
                billing_reason="subscription_update",
                period=(now, now),
                now=now,
            )
            inv["parent"]["subscription_details"]["subscription_proration_date"] = pdate
            sub["latest_invoice"] = inv["id"]
            eng.finalize(st, inv, now)
        elif behavior == "always_invoice" and saved:
            start, end = eng.period_of(sub)
            lines = eng.pending_item_lines(st, sub["customer"], sub["id"], None)
            inv = eng.new_invoice(
                st,
                customer=sub["customer"],
                sub=sub,
                lines=lines,
                billing_reason="subscription_update",
                period=(now, now),
                now=now,
            )
            inv["parent"]["subscription_details"]["subscription_proration_date"] = pdate
            sub["latest_invoice"] = inv["id"]
            eng.finalize(st, inv, now)
    emit(
        st,
        "customer.subscription.updated",
        sub,
        before=before,
        created=now,
        request_id=ctx.request_id,
    )
    return sub


def _set_cancel_at(sub: dict[str, Any], value: Any, now: int) -> None:
    """`cancel_at`: a timestamp, or the mixed interval helpers.

    "min_period_end: Schedules cancelation of the subscription at the earliest
    items.data.current_period_end across all subscription items"; "max_period_end: ... at the
    latest"; they "resolve to timestamps immediately" (docs.stripe.com/changelog/basil/
    2025-07-30/cancel-at-enums). An empty value clears it.
    """
    ends = [int(i["current_period_end"]) for i in sub["items"]["data"]]
    if value in ("", None):
        sub["cancel_at"], sub["canceled_at"] = None, None
        return
    if value == "min_period_end":
        sub["cancel_at"] = min(ends)
    elif value == "max_period_end":
        sub["cancel_at"] = max(ends)
    elif isinstance(value, int) or str(value).isdigit():
        sub["cancel_at"] = int(value)
    else:
        raise StripeError(400, f"Invalid cancel_at: {value!r}", param="cancel_at")
    sub["cancel_at_period_end"] = False
    sub["canceled_at"] = now


def _apply_item_changes(
    st: SandboxState, sub: dict[str, Any], changes: list[dict[str, Any]], now: int
) -> None:
    start, end = eng.period_of(sub)
    data = sub["items"]["data"]
    for i, ch in enumerate(changes):
        if ch.get("id"):
            item = next((it for it in data if it["id"] == ch["id"]), None)
            if item is None:
                raise StripeError(
                    400,
                    f"No such subscription item: '{ch['id']}'",
                    param=f"items[{i}][id]",
                    code="resource_missing",
                )
            if ch.get("deleted"):
                data.remove(item)
                continue
            if ch.get("price") and ch["price"] != item["price"]["id"]:
                item["price"] = copy.deepcopy(st.get("price", ch["price"], f"items[{i}][price]"))
                # The new price bills usage from the change on (both billing modes).
                item["_usage_start"] = now
            if ch.get("quantity") not in (None, ""):
                item["quantity"] = int(ch["quantity"])
            if "metadata" in ch:
                apply_metadata(item, ch["metadata"])
        else:
            item = _new_item(st, sub["id"], ch, now, i)
            item["current_period_start"], item["current_period_end"] = start, end
            data.append(item)
    sub["items"]["total_count"] = len(data)


# ---- lifecycle (driven by billing_engine.run_until) --------------------------------------------


def renew(st: SandboxState, sub: dict[str, Any], t: int) -> None:
    """Renew the items whose period ends now, on one invoice.

    Each item renews on its own period: a monthly item every month, a yearly one every year.
    "Stripe generates a single, combined invoice when item-level billing periods align and
    separate invoices when billing periods diverge"; in the page's example a monthly and a
    quarterly item renew together on the quarter and "the subscription renews and generates a
    new invoice for the monthly price" alone in between (docs.stripe.com/billing/subscriptions/
    mixed-interval). Due items bill as any renewal does: licensed ones in advance for their
    new period, metered ones in arrears for the period that ended.
    """
    before = copy.deepcopy(sub)
    due = [i for i in sub["items"]["data"] if int(i["current_period_end"]) <= t]
    old = {i["id"]: (int(i["current_period_start"]), int(i["current_period_end"])) for i in due}
    old_start, old_end = max(p[0] for p in old.values()), max(p[1] for p in old.values())
    lines = []
    for item in due:
        start, end = old[item["id"]]
        lines += eng.metered_lines(st, sub, start, end, [item])
        item.pop("_usage_start", None)
        item["current_period_start"] = end
        item["current_period_end"] = eng.item_period_end(sub, item, end)
    lines = eng.licensed_lines_own_periods(st, sub, due) + lines
    lines += eng.pending_item_lines(st, sub["customer"], sub["id"], None)
    emit(st, "customer.subscription.updated", sub, before=before, created=t)
    inv = eng.new_invoice(
        st,
        customer=sub["customer"],
        sub=sub,
        lines=lines,
        billing_reason="subscription_cycle",
        period=(old_start, old_end),
        now=t,
        auto_advance=sub["status"] != "unpaid",
    )
    sub["latest_invoice"] = inv["id"]


def end_trial(st: SandboxState, sub: dict[str, Any], t: int) -> None:
    before = copy.deepcopy(sub)
    has_pm = eng.default_pm(st, sub, sub["customer"]) is not None
    behavior = sub["trial_settings"]["end_behavior"]["missing_payment_method"]
    if not has_pm and behavior == "cancel":
        cancel_subscription_now(st, sub, reason="cancellation_requested", now=t)
        return
    if not has_pm and behavior == "pause":
        sub["status"] = "paused"
        sub["pause_collection"] = None
        emit(st, "customer.subscription.paused", sub, created=t)
        emit(st, "customer.subscription.updated", sub, before=before, created=t)
        return
    start = t
    sub["status"] = "active"
    # "When the trial ends, a new billing cycle starts for the customer", also when an update
    # ended it early at a new `trial_end` or `now` (docs.stripe.com/billing/subscriptions/trials):
    # later periods are anchored at this instant, not at the trial end first agreed.
    sub["billing_cycle_anchor"] = t
    sub["_anchor_day"] = datetime.fromtimestamp(t, UTC).day
    eng.clear_usage_starts(sub)
    eng.start_item_periods(sub, start)
    lines = eng.licensed_lines_own_periods(st, sub)
    lines += eng.pending_item_lines(st, sub["customer"], sub["id"], None)
    emit(st, "customer.subscription.updated", sub, before=before, created=t)
    inv = eng.new_invoice(
        st,
        customer=sub["customer"],
        sub=sub,
        lines=lines,
        billing_reason="subscription_cycle",
        period=(start, start),
        now=t,
    )
    sub["latest_invoice"] = inv["id"]


def cancel_subscription_now(
    st: SandboxState,
    sub: dict[str, Any],
    *,
    reason: str,
    now: int | None = None,
    comment: str | None = None,
) -> None:
    t = now if now is not None else customer_now(st, sub["customer"])
    sub["status"] = "canceled"
    sub["canceled_at"] = sub.get("canceled_at") or t
    sub["ended_at"] = t
    sub["cancel_at_period_end"] = (
        False if reason != "cancellation_requested" else sub["cancel_at_period_end"]
    )
    sub["cancellation_details"] = {"comment": comment, "feedback": None, "reason": reason}
    for inv in st.table("invoice").values():
        if inv.get("_subscription") == sub["id"] and inv["status"] == "open":
            inv["next_payment_attempt"] = None
    emit(st, "customer.subscription.deleted", sub, created=t)


def end_as_scheduled(st: SandboxState, sub: dict[str, Any], t: int) -> None:
    """A cancellation at period end (or at `cancel_at`) takes effect with a final invoice.

    "Any metered usage is charged for in a final invoice when the subscription cancels at the
    end of the billing period", and pending prorations "are also left in place and collected at
    the end of the period" (docs.stripe.com/billing/subscriptions/cancel and
    docs.stripe.com/api/subscriptions/cancel). Without metered items or pending items there is
    nothing to invoice.
    """
    if sub["status"] in ("active", "past_due", "unpaid"):
        start, _ = eng.period_of(sub)
        lines = eng.metered_lines(st, sub, start, t)
        lines += eng.pending_item_lines(st, sub["customer"], sub["id"], None)
        if lines:
            inv = eng.new_invoice(
                st,
                customer=sub["customer"],
                sub=sub,
                lines=lines,
                billing_reason="subscription_cycle",
                period=(start, t),
                now=t,
            )
            sub["latest_invoice"] = inv["id"]
    cancel_subscription_now(st, sub, reason="cancellation_requested", now=t)


def expire_incomplete(st: SandboxState, sub: dict[str, Any], t: int) -> None:
    before = copy.deepcopy(sub)
    sub["status"] = "incomplete_expired"
    sub["ended_at"] = t
    inv = st.table("invoice").get(sub.get("latest_invoice") or "")
    if inv is not None and inv["status"] == "open":
        eng.void(st, inv, t)
    emit(st, "customer.subscription.updated", sub, before=before, created=t)
    emit(st, "customer.subscription.deleted", sub, created=t)


@route("DELETE", "/v1/subscriptions/{id}", P.SubscriptionCancelParams)
def cancel_subscription(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    sub = ctx.state.get(SUBS, id)
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise StripeError(
            400, f"A canceled subscription can't be canceled again: {id}.", code="resource_missing"
        )
    details = params.get("cancellation_details") or {}
    st = ctx.state
    now = customer_now(st, sub["customer"])
    _settle_on_cancel(
        st,
        sub,
        now,
        invoice_now=bool(params.get("invoice_now", False)),
        prorate=bool(params.get("prorate", False)),
    )
    cancel_subscription_now(
        st, sub, reason="cancellation_requested", now=now, comment=details.get("comment") or None
    )
    return sub


def _settle_on_cancel(
    st: SandboxState, sub: dict[str, Any], now: int, *, invoice_now: bool, prorate: bool
) -> None:
    """What an immediate cancellation bills, per docs.stripe.com/api/subscriptions/cancel.

    `invoice_now` "will generate a final invoice that invoices for any un-invoiced metered usage
    and new/pending proration invoice items" (default false: the period's unbilled metered usage
    is never invoiced, docs.stripe.com/billing/subscriptions/cancel); `prorate` "will generate a
    proration invoice item that credits remaining unused time until the subscription period
    end" (default false); pending prorations are removed when both are false. The final invoice
    is a draft that finalizes after the finalization grace period, like a period-end invoice, so
    usage reported in that hour counts (the docs do not give its timing).
    """
    if sub["status"] not in ("active", "past_due", "unpaid"):
        return  # a trial, a pause or an incomplete start has nothing billed in arrears
    start, end = eng.period_of(sub)
    if prorate:
        credits = []
        for item in sub["items"]["data"]:
            price = st.table("price")[item["price"]["id"]]
            if price["recurring"]["usage_type"] == "metered":
                continue
            # Each item credits the unused part of its own period (a yearly fee, its year).
            i_start, i_end = int(item["current_period_start"]), int(item["current_period_end"])
            if i_end <= now:
                continue
            frac = Decimal(i_end - now) / Decimal(i_end - i_start)
            qty = int(item.get("quantity") or 1)
            amt = (Decimal(amount_for(price, qty)) * frac).quantize(Decimal(1), ROUND_HALF_UP)
            credits.append(
                {
                    "price": price,
                    "quantity": qty,
                    "amount": -int(amt),
                    "description": f"Unused time on {qty} × {eng.product_name(st, price)} "
                    f"after {eng._day(now)}",
                    "period": {"start": now, "end": i_end},
                }
            )
        save_invoice_items(st, sub, credits, now)
    if invoice_now:
        lines = eng.metered_lines(st, sub, start, now)
        lines += eng.pending_item_lines(st, sub["customer"], sub["id"], None)
        inv = eng.new_invoice(
            st,
            customer=sub["customer"],
            sub=sub,
            lines=lines,
            billing_reason="subscription_cycle",
            period=(start, now),
            now=now,
        )
        sub["latest_invoice"] = inv["id"]
    elif not prorate:
        for ii in st.all("invoiceitem"):
            if ii.get("subscription") == sub["id"] and not ii.get("invoice") and ii["proration"]:
                ii["deleted"] = True


@route("POST", "/v1/subscriptions/{id}/resume", P.SubscriptionResumeParams)
def resume_subscription(ctx: Ctx, params: dict[str, Any], id: str) -> dict[str, Any]:
    """Resume a paused subscription; its billing cycle restarts now (the documented default).

    `payment_behavior` (docs.stripe.com/changelog/dahlia/2026-05-27/pause-subscriptions and
    docs.stripe.com/api/subscriptions/resume):
    - `resume_on_payment_attempt` (default): no payment attempt during the request; the
      subscription is active at once; if collecting the resumption invoice fails it moves to
      `past_due` and "Stripe doesn't retry failed payments". The docs do not say when the
      invoice is collected: the sandbox collects it automatically when it finalizes, after the
      finalization grace period, and never retries it.
    - `resume_on_payment_success`: payment is attempted during the request; the subscription
      stays `paused` until the invoice is paid, and failed payments are retried on the account's
      retry schedule.
    """
    st = ctx.state
    sub = st.get(SUBS, id)
    if sub["status"] != "paused":
        raise StripeError(400, "Only paused subscriptions can be resumed.")
    behavior = params.get("payment_behavior") or "resume_on_payment_attempt"
    if behavior not in RESUME_BEHAVIORS:
        raise StripeError(
            400,
            f"Invalid payment_behavior: must be one of {', '.join(RESUME_BEHAVIORS)}",
            param="payment_behavior",
        )
    now = customer_now(st, sub["customer"])
    before = copy.deepcopy(sub)
    # billing_cycle_anchor defaults to `now` on resume: the cycle restarts at this instant.
    sub["billing_cycle_anchor"] = now
    sub["_anchor_day"] = datetime.fromtimestamp(now, UTC).day
    start = now
    eng.clear_usage_starts(sub)
    eng.start_item_periods(sub, start)
    lines = eng.licensed_lines_own_periods(st, sub)
    lines += eng.pending_item_lines(st, sub["customer"], sub["id"], None)
    on_success = behavior == "resume_on_payment_success"
    if not on_success:
        sub["status"] = "active"
        emit(st, "customer.subscription.resumed", sub, created=now, request_id=ctx.request_id)
    emit(st, "customer.subscription.updated", sub, before=before, created=now)
    inv = eng.new_invoice(
        st,
        customer=sub["customer"],
        sub=sub,
        lines=lines,
        billing_reason="subscription_cycle",
        period=(start, start),
        now=now,
    )
    sub["latest_invoice"] = inv["id"]
    if on_success:
        sub["_resume_invoice"] = inv["id"]
        eng.finalize(st, inv, now)  # pays and resumes (mark_paid), or stays paused and retries
    else:
        inv["_no_retries"] = True
    return sub
