"""Invoices and the time-driven billing lifecycle.

Building invoices (licensed lines in advance, metered lines in arrears from the meter,
prorations from pending invoice items), finalizing, paying, retrying, and the scheduler that a
test-clock advance (or real time, for customers without a clock) drives in time order.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe

from . import tax
from .clock import DAY, add_interval, customer_now
from .resources.catalog import amount_for
from .resources.customers import card_error, card_outcome
from .resources.events import emit
from .resources.meters import aggregate
from .shapes import build
from .store import SandboxState
from .wire import StripeError

MAX_STEPS = 10_000


# ---- small helpers -----------------------------------------------------------------------------


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%d %b %Y")


def product_name(st: SandboxState, price: dict[str, Any]) -> str:
    prod = st.table("product").get(price["product"]) or {}
    return str(prod.get("name") or price["product"])


def period_of(sub: dict[str, Any]) -> tuple[int, int]:
    """The subscription's shortest current item period (the one that renews first).

    Periods live on the items, and in a mixed interval subscription they differ; read with
    older API versions "the top-level current_period_[start|end] will reflect the smallest
    item level period" (docs.stripe.com/changelog/basil/2025-07-30/support-mixed-intervals).
    """
    item = min(sub["items"]["data"], key=lambda i: int(i["current_period_end"]))
    return int(item["current_period_start"]), int(item["current_period_end"])


def item_interval(item: dict[str, Any]) -> tuple[str, int]:
    """An item's recurring interval and count (its price's)."""
    rec = item["price"]["recurring"]
    return str(rec["interval"]), int(rec.get("interval_count") or 1)


def mixed_intervals(items: list[dict[str, Any]]) -> bool:
    """True when the items renew on different intervals (a mixed interval subscription)."""
    return len({item_interval(i) for i in items}) > 1


def item_period_end(sub: dict[str, Any], item: dict[str, Any], start: int) -> int:
    """Where an item's period that starts at `start` ends: its own interval from the anchor
    (an item whose price changed interval has its own anchor, set at the change)."""
    interval, count = item_interval(item)
    anchor = item.get("_anchor_day") or sub.get("_anchor_day")
    return add_interval(start, interval, count, anchor)


def start_item_periods(sub: dict[str, Any], start: int) -> None:
    """Every item starts a period at `start` that lasts its own interval: a monthly item ends
    a month later, a yearly one a year later (docs.stripe.com/billing/subscriptions/
    mixed-interval: "item-level billing periods")."""
    for item in sub["items"]["data"]:
        item.pop("_anchor_day", None)
        item["current_period_start"] = start
        item["current_period_end"] = item_period_end(sub, item, start)


def set_period(sub: dict[str, Any], start: int, end: int) -> None:
    for item in sub["items"]["data"]:
        item["current_period_start"] = start
        item["current_period_end"] = end


def usage_start(sub: dict[str, Any], item: dict[str, Any]) -> int:
    """Where an item's metered usage starts counting: its period start, or a later price change."""
    start = int(item["current_period_start"])
    return max(start, int(item.get("_usage_start") or start))


def clear_usage_starts(sub: dict[str, Any]) -> None:
    """A new period bills every item's usage from its start."""
    for item in sub["items"]["data"]:
        item.pop("_usage_start", None)


def next_period_end(sub: dict[str, Any], start: int) -> int:
    rec = sub["items"]["data"][0]["price"]["recurring"]
    return add_interval(start, rec["interval"], rec["interval_count"], sub.get("_anchor_day"))


def default_pm(
    st: SandboxState, sub: dict[str, Any] | None, customer_id: str
) -> dict[str, Any] | None:
    pm_id = (sub or {}).get("default_payment_method")
    if not pm_id:
        cus = st.table("customer").get(customer_id) or {}
        pm_id = (cus.get("invoice_settings") or {}).get("default_payment_method")
    return st.table("payment_method").get(pm_id) if pm_id else None


# ---- invoice lines -----------------------------------------------------------------------------


def _line(
    st: SandboxState,
    *,
    amount: int,
    price: dict[str, Any],
    quantity: int | None,
    start: int,
    end: int,
    sub_id: str | None,
    si_id: str | None,
    description: str,
    proration: bool = False,
    invoice_item: str | None = None,
) -> dict[str, Any]:
    line = build(stripe.InvoiceLineItem, id=st.new_id("il"), object="line_item")
    if invoice_item:
        parent = {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": invoice_item,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
            },
            "subscription_item_details": None,
        }
    else:
        parent = {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
                "subscription_item": si_id,
            },
        }
    line.update(
        amount=amount,
        subtotal=amount,
        currency=price["currency"],
        description=description,
        discountable=True,
        discounts=[],
        discount_amounts=[],
        livemode=False,
        metadata={},
        parent=parent,
        period={"start": start, "end": end},
        pricing={
            "type": "price_details",
            "price_details": {"price": price["id"], "product": price["product"]},
            "unit_amount_decimal": price.get("unit_amount_decimal"),
        },
        quantity=quantity,
        subscription=sub_id,
        taxes=[],
        pretax_credit_amounts=[],
    )
    return line


def licensed_lines(
    st: SandboxState,
    sub: dict[str, Any],
    start: int,
    end: int,
    items: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    out = []
    for item in items or sub["items"]["data"]:
        price = st.table("price")[item["price"]["id"]]
        if (price.get("recurring") or {}).get("usage_type") == "metered":
            continue
        qty = int(item.get("quantity") or 1)
        out.append(
            _line(
                st,
                amount=amount_for(price, qty),
                price=price,
                quantity=qty,
                start=start,
                end=end,
                sub_id=sub["id"],
                si_id=item["id"],
                description=f"{qty} × {product_name(st, price)} (at "
                f"${Decimal(price.get('unit_amount_decimal') or 0) / 100:.2f} / "
                f"{price['recurring']['interval']})",
            )
        )
    return out


def licensed_lines_own_periods(
    st: SandboxState, sub: dict[str, Any], items: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Licensed lines billed in advance, each for its own item's current period (a yearly
    item's line spans its year, a monthly one's its month)."""
    out = []
    for item in sub["items"]["data"] if items is None else items:
        start, end = int(item["current_period_start"]), int(item["current_period_end"])
        out += licensed_lines(st, sub, start, end, [item])
    return out


def metered_quantity(
    st: SandboxState, price: dict[str, Any], customer: str, start: int, end: int
) -> int:
    meter = st.table("billing.meter").get(price["recurring"]["meter"])
    if meter is None:
        return 0
    value = aggregate(st, meter, customer, start, end)
    return max(0, int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def metered_lines(
    st: SandboxState,
    sub: dict[str, Any],
    start: int,
    end: int,
    items: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    out = []
    for item in sub["items"]["data"] if items is None else items:
        price = st.table("price")[item["price"]["id"]]
        if (price.get("recurring") or {}).get("usage_type") != "metered":
            continue
        # A price that replaced another mid-period bills from the change on (the replaced
        # price's usage before it is its own invoice item): manage-billing-setup, "Update
        # prices mid-cycle".
        begin = max(start, usage_start(sub, item))
        qty = metered_quantity(st, price, sub["customer"], begin, end)
        out.append(
            _line(
                st,
                amount=amount_for(price, qty),
                price=price,
                quantity=qty,
                start=begin,
                end=end,
                sub_id=sub["id"],
                si_id=item["id"],
                description=f"{product_name(st, price)} (usage {_day(begin)} – {_day(end)})",
            )
        )
    return out


def pending_item_lines(
    st: SandboxState, customer: str, sub_id: str | None, invoice_id: str | None
) -> list[dict[str, Any]]:
    """Lines for pending invoice items (prorations, one-off items); marks them as invoiced if
    invoice_id.

    An item created for the customer without a subscription goes on the customer's next
    invoice, a subscription's included ("If no invoice is specified, the item will be on the
    next invoice created for the customer specified": docs.stripe.com/api/invoiceitems/create).
    """
    out = []
    for ii in list(reversed(st.all("invoiceitem"))):
        if ii["customer"] != customer or ii.get("invoice"):
            continue
        if ii.get("subscription") not in (None, sub_id):
            continue
        pricing = ii.get("pricing") or {}
        price_id = (pricing.get("price_details") or {}).get("price")
        # An item priced by amount alone has no price: its line carries none either.
        price = (
            st.table("price")[price_id]
            if price_id
            else {"id": None, "product": None, "currency": ii["currency"]}
        )
        line = _line(
            st,
            amount=ii["amount"],
            price=price,
            quantity=ii["quantity"],
            start=ii["period"]["start"],
            end=ii["period"]["end"],
            sub_id=sub_id,
            si_id=None,
            description=ii["description"],
            proration=ii["proration"],
            invoice_item=ii["id"],
        )
        if not price_id:
            line["pricing"] = None
        out.append(line)
        if invoice_id:
            ii["invoice"] = invoice_id
    return out


# ---- invoices ----------------------------------------------------------------------------------


def _totals(inv: dict[str, Any]) -> None:
    total = sum(int(line["amount"]) for line in inv["lines"]["data"])
    inv["subtotal"] = inv["subtotal_excluding_tax"] = total
    inv["total_excluding_tax"] = total
    # Exclusive tax goes on top of the lines (tax.py: the lines' taxes, aggregated).
    inv["total"] = total + tax.totals(inv)
    inv["amount_due"] = max(0, inv["total"])
    inv["amount_remaining"] = max(0, inv["total"]) - inv["amount_paid"]


def new_invoice(
    st: SandboxState,
    *,
    customer: str,
    sub: dict[str, Any] | None,
    lines: list[dict[str, Any]],
    billing_reason: str,
    period: tuple[int, int],
    now: int,
    auto_advance: bool = True,
    preview: bool = False,
) -> dict[str, Any]:
    cus = st.table("customer")[customer]
    inv_id = f"upcoming_in_{st.new_id('x')[2:]}" if preview else st.new_id("in")
    for line in lines:
        line["invoice"] = inv_id
        if line["parent"]["invoice_item_details"] and not preview:
            ii = st.table("invoiceitem").get(line["parent"]["invoice_item_details"]["invoice_item"])
            if ii is not None:
                ii["invoice"] = inv_id
    currency = lines[0]["currency"] if lines else "usd"
    inv = build(
        stripe.Invoice,
        id=inv_id,
        object="invoice",
        livemode=False,
        account_country="US",
        account_name="Billing Pipelines Sandbox",
        amount_paid=0,
        amount_overpaid=0,
        amount_paid_off_stripe=0,
        amount_shipping=0,
        attempt_count=0,
        attempted=False,
        auto_advance=auto_advance,
        automatic_tax={
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        automatically_finalizes_at=(now + st.settings.finalization_grace_seconds)
        if auto_advance
        else None,
        billing_reason=billing_reason,
        collection_method="charge_automatically",
        created=now,
        currency=currency,
        customer=customer,
        customer_email=cus.get("email"),
        customer_name=cus.get("name"),
        customer_tax_exempt="none",
        customer_tax_ids=[],
        default_tax_rates=[],
        discounts=[],
        effective_at=None,
        issuer={"type": "self", "account": None},
        lines={
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{inv_id}/lines",
        },
        metadata={},
        next_payment_attempt=None,
        number=None,
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": dict(sub["metadata"]),
                "subscription": sub["id"],
                "subscription_proration_date": None,
            },
        }
        if sub
        else None,
        payment_settings={
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        period_start=period[0],
        period_end=period[1],
        post_payment_credit_notes_amount=0,
        pre_payment_credit_notes_amount=0,
        starting_balance=0,
        ending_balance=None,
        status="draft",
        status_transitions={
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        test_clock=cus.get("test_clock"),
        total_discount_amounts=[],
        total_taxes=[],
        total_pretax_credit_amounts=[],
        webhooks_delivered_at=None,
        payments={
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/invoice_payments?invoice={inv_id}",
        },
        hosted_invoice_url=None,
        invoice_pdf=None,
        confirmation_secret=None,
    )
    inv.pop("deleted", None)
    inv["_subscription"] = sub["id"] if sub else None
    tax.apply(st, inv, sub)
    _totals(inv)
    if preview:
        inv["automatically_finalizes_at"] = None
        return inv
    st.put(inv)
    emit(st, "invoice.created", inv, created=now)
    return inv


def build_preview(
    st: SandboxState,
    *,
    customer: str,
    sub: dict[str, Any],
    lines: list[dict[str, Any]],
    period: tuple[int, int],
    now: int,
) -> dict[str, Any]:
    end = period[1]
    inv = new_invoice(
        st,
        customer=customer,
        sub=sub,
        lines=lines,
        billing_reason="upcoming",
        period=period,
        now=end,
        preview=True,
    )
    return inv


def refresh_metered_lines(st: SandboxState, inv: dict[str, Any]) -> None:
    """Recompute metered quantities (usage reported during the grace period counts)."""
    for line in inv["lines"]["data"]:
        details = line["parent"]["subscription_item_details"]
        if not details or details["proration"]:
            continue
        price = st.table("price")[line["pricing"]["price_details"]["price"]]
        if (price.get("recurring") or {}).get("usage_type") != "metered":
            continue
        qty = metered_quantity(
            st, price, inv["customer"], line["period"]["start"], line["period"]["end"]
        )
        line["quantity"] = qty
        line["amount"] = line["subtotal"] = amount_for(price, qty)
    # Tax at the rate of finalization time, on the lines as they now are (tax.py).
    tax.apply(st, inv, st.table("subscription").get(inv.get("_subscription") or ""))
    _totals(inv)


def _apply_customer_balance(cus: dict[str, Any], inv: dict[str, Any]) -> None:
    """A credit balance pays finalized invoices first; a negative invoice adds to it.

    "The invoice balance automatically applies toward the next invoice finalized to a
    customer", and "prorations from downgrading a subscription can indirectly create credits
    to reduce the amount due on the next invoice" (docs.stripe.com/billing/customer/balance);
    the customer's balance "is automatically applied to their next invoice upon finalization"
    (docs.stripe.com/api/customer_balance_transactions). The docs do not spell out the invoice
    fields of a negative total: the sandbox keeps `total` negative, `amount_due` 0, and moves
    the credit to `ending_balance` and the customer's `balance`. Only a non-zero balance or a
    negative total changes anything here.
    """
    balance = int(cus.get("balance") or 0)
    total = int(inv["total"])
    if balance == 0 and total >= 0:
        return
    applied = total + balance
    inv["starting_balance"] = balance
    inv["amount_due"] = max(0, applied)
    inv["amount_remaining"] = inv["amount_due"] - inv["amount_paid"]
    inv["ending_balance"] = min(0, applied)
    cus["balance"] = inv["ending_balance"]


def finalize(st: SandboxState, inv: dict[str, Any], now: int, *, attempt: bool = True) -> None:
    if inv["status"] != "draft":
        raise StripeError(
            400, "This invoice is already finalized, you can't re-finalize a non-draft invoice."
        )
    refresh_metered_lines(st, inv)
    cus = st.table("customer")[inv["customer"]]
    _apply_customer_balance(cus, inv)
    seq = cus.get("next_invoice_sequence", 1)
    cus["next_invoice_sequence"] = seq + 1
    inv["number"] = f"{cus['invoice_prefix']}-{seq:04d}"
    inv["status"] = "open"
    inv["status_transitions"]["finalized_at"] = now
    inv["effective_at"] = now
    inv["automatically_finalizes_at"] = None
    inv["ending_balance"] = inv.get("ending_balance") or 0
    token = inv["id"][3:]
    inv["hosted_invoice_url"] = f"https://invoice.stripe.com/i/acct_sandbox/test_{token}"
    inv["invoice_pdf"] = f"https://pay.stripe.com/invoice/acct_sandbox/test_{token}/pdf"
    emit(st, "invoice.finalized", inv, created=now)
    if inv["amount_due"] == 0:
        mark_paid(st, inv, now)
    elif attempt and inv["auto_advance"]:
        attempt_payment(st, inv, now, automatic=True)


def mark_paid(st: SandboxState, inv: dict[str, Any], now: int) -> None:
    before = copy.deepcopy(inv)
    inv["status"] = "paid"
    inv["amount_paid"] = inv["amount_due"]
    inv["amount_remaining"] = 0
    inv["attempted"] = True if inv["amount_due"] else inv["attempted"]
    inv["next_payment_attempt"] = None
    inv["status_transitions"]["paid_at"] = now
    inv["auto_advance"] = False
    del before
    emit(st, "invoice.paid", inv, created=now)
    emit(st, "invoice.payment_succeeded", inv, created=now)
    sub = st.table("subscription").get(inv.get("_subscription") or "")
    if sub is not None and sub["status"] == "paused" and sub.get("_resume_invoice") == inv["id"]:
        # resume_on_payment_success: the subscription resumes once its invoice is paid
        # (docs.stripe.com/changelog/dahlia/2026-05-27/pause-subscriptions).
        sbefore = copy.deepcopy(sub)
        sub["status"] = "active"
        sub.pop("_resume_invoice", None)
        emit(st, "customer.subscription.resumed", sub, created=now)
        emit(st, "customer.subscription.updated", sub, before=sbefore, created=now)
    elif sub is not None and sub["status"] in ("incomplete", "past_due", "unpaid"):
        sbefore = copy.deepcopy(sub)
        sub["status"] = "active"
        emit(st, "customer.subscription.updated", sub, before=sbefore, created=now)


def attempt_payment(
    st: SandboxState,
    inv: dict[str, Any],
    now: int,
    *,
    automatic: bool,
    payment_method: dict[str, Any] | None = None,
) -> str | None:
    """Charge the invoice; returns None on success or the decline code."""
    sub = st.table("subscription").get(inv.get("_subscription") or "")
    pm = payment_method or default_pm(st, sub, inv["customer"])
    outcome = card_outcome(pm)
    inv["attempt_count"] += 1
    inv["attempted"] = True
    if outcome is None:
        mark_paid(st, inv, now)
        return None
    before = copy.deepcopy(inv)
    first_invoice = inv["billing_reason"] == "subscription_create"
    schedule = st.settings.retry_schedule_days
    # Stripe retries on the account's retry settings, but "doesn't retry when no payment method
    # is available" (docs.stripe.com/billing/revenue-recovery/smart-retries), nor the invoice of
    # a subscription resumed with resume_on_payment_attempt (docs.stripe.com/changelog/dahlia/
    # 2026-05-27/pause-subscriptions). Neither case is "retries exhausted": the docs name no
    # end-of-retries action for them, so none runs (the stricter choice: the subscription stays
    # past_due until someone pays).
    no_retry = outcome == "no_payment_method" or bool(inv.get("_no_retries"))
    if automatic and not first_invoice and no_retry:
        inv["next_payment_attempt"] = None
    elif automatic and not first_invoice:
        if inv.get("_first_failure") is None:
            inv["_first_failure"] = now
        n = inv["attempt_count"]
        if n <= len(schedule):
            inv["next_payment_attempt"] = inv["_first_failure"] + schedule[n - 1] * DAY
        else:
            inv["next_payment_attempt"] = None
    elif not automatic and inv.get("_first_failure") is not None:
        pass  # a manual attempt leaves the automatic schedule as it is
    else:
        inv["next_payment_attempt"] = None
    inv["last_finalization_error"] = None
    del before
    emit(st, "invoice.payment_failed", inv, created=now)
    if sub is not None and not first_invoice and sub["status"] in ("active", "trialing"):
        sbefore = copy.deepcopy(sub)
        sub["status"] = "past_due"
        emit(st, "customer.subscription.updated", sub, before=sbefore, created=now)
    if automatic and not first_invoice and not no_retry and inv["next_payment_attempt"] is None:
        _retries_exhausted(st, inv, sub, now)
    return outcome


def _retries_exhausted(
    st: SandboxState, inv: dict[str, Any], sub: dict[str, Any] | None, now: int
) -> None:
    if st.settings.invoice_after_retries == "uncollectible":
        mark_uncollectible(st, inv, now)
    if sub is None:
        return
    action = st.settings.subscription_after_retries
    if action == "canceled":
        from .resources.subscriptions import cancel_subscription_now

        cancel_subscription_now(st, sub, reason="payment_failed", now=now)
    elif action == "unpaid" and sub["status"] != "unpaid":
        sbefore = copy.deepcopy(sub)
        sub["status"] = "unpaid"
        emit(st, "customer.subscription.updated", sub, before=sbefore, created=now)


def mark_uncollectible(st: SandboxState, inv: dict[str, Any], now: int) -> None:
    if inv["status"] != "open":
        raise StripeError(400, "You can only mark an open invoice as uncollectible.")
    before = copy.deepcopy(inv)
    inv["status"] = "uncollectible"
    inv["next_payment_attempt"] = None
    inv["auto_advance"] = False
    inv["status_transitions"]["marked_uncollectible_at"] = now
    emit(st, "invoice.marked_uncollectible", inv, created=now)
    emit(st, "invoice.updated", inv, before=before, created=now)


def void(st: SandboxState, inv: dict[str, Any], now: int) -> None:
    if inv["status"] not in ("open", "uncollectible"):
        raise StripeError(
            400, f"You can only void an open or uncollectible invoice (invoice is {inv['status']})."
        )
    inv["status"] = "void"
    inv["next_payment_attempt"] = None
    inv["auto_advance"] = False
    inv["amount_remaining"] = 0
    inv["status_transitions"]["voided_at"] = now
    emit(st, "invoice.voided", inv, created=now)


def pay_now(st: SandboxState, inv: dict[str, Any], pm: dict[str, Any] | None) -> None:
    now = customer_now(st, inv["customer"])
    if inv["status"] == "paid":
        raise StripeError(400, "Invoice is already paid.")
    if inv["status"] == "draft":
        finalize(st, inv, now, attempt=False)
        if inv["status"] == "paid":
            return
    if inv["status"] not in ("open", "uncollectible"):
        raise StripeError(400, f"You cannot pay an invoice with status {inv['status']}.")
    outcome = attempt_payment(st, inv, now, automatic=False, payment_method=pm)
    if outcome is not None:
        raise card_error(outcome if outcome != "no_payment_method" else "generic_decline")


# ---- scheduler ---------------------------------------------------------------------------------


def _sub_actions(st: SandboxState, sub: dict[str, Any]) -> list[tuple[int, str]]:
    s = sub["status"]
    acts: list[tuple[int, str]] = []
    if s == "trialing" and sub.get("trial_end"):
        if not sub.get("_trial_will_end_sent") and sub["trial_end"] - 3 * DAY > sub["created"]:
            acts.append((sub["trial_end"] - 3 * DAY, "trial_will_end"))
        acts.append((sub["trial_end"], "trial_end"))
    if s in ("active", "past_due", "unpaid"):
        _, end = period_of(sub)
        if sub.get("cancel_at") and sub["cancel_at"] <= end:
            acts.append((sub["cancel_at"], "cancel"))
        elif sub["cancel_at_period_end"]:
            acts.append((end, "cancel"))
        else:
            acts.append((end, "renew"))
    if s == "incomplete":
        acts.append((sub["created"] + st.settings.incomplete_expiry_seconds, "expire"))
    return acts


def _inv_actions(inv: dict[str, Any]) -> list[tuple[int, str]]:
    if inv["status"] == "draft" and inv["auto_advance"] and inv["automatically_finalizes_at"]:
        return [(inv["automatically_finalizes_at"], "finalize")]
    if inv["status"] == "open" and inv["next_payment_attempt"]:
        return [(inv["next_payment_attempt"], "retry")]
    return []


def _on_clock(st: SandboxState, customer: str, clock_id: str | None) -> bool:
    cus = st.table("customer").get(customer) or {}
    return cus.get("test_clock") == clock_id


def _actions(st: SandboxState, obj: dict[str, Any]) -> list[tuple[int, str]]:
    """An object's lifecycle actions ahead: (instant, action)."""
    return _sub_actions(st, obj) if obj["object"] == "subscription" else _inv_actions(obj)


def next_action(st: SandboxState, clock_id: str | None) -> tuple[int, str, dict[str, Any]] | None:
    """The earliest due action on a clock's objects, from the due-work index (cost: what is due)."""
    found = st.due.next(st, clock_id, _actions)
    if st.verify_due:
        scanned = scan_next_action(st, clock_id)
        if _named(found) != _named(scanned):
            raise AssertionError(f"due-work index {found} differs from the full scan {scanned}")
    return found


def _named(found: tuple[int, str, dict[str, Any]] | None) -> tuple[int, str, str] | None:
    return None if found is None else (found[0], found[1], found[2]["id"])


def scan_next_action(
    st: SandboxState, clock_id: str | None
) -> tuple[int, str, dict[str, Any]] | None:
    """The earliest due action found by scanning every object (the index's reference)."""
    best: tuple[int, str, dict[str, Any]] | None = None
    for sub in st.table("subscription").values():
        if not _on_clock(st, sub["customer"], clock_id):
            continue
        for t, a in _sub_actions(st, sub):
            if best is None or t < best[0]:
                best = (t, a, sub)
    for inv in st.table("invoice").values():
        if not _on_clock(st, inv["customer"], clock_id):
            continue
        for t, a in _inv_actions(inv):
            if best is None or t < best[0]:
                best = (t, a, inv)
    return best


def run_until(st: SandboxState, clock: dict[str, Any] | None, target: int) -> int:
    """Run every due action up to `target` in time order. Returns how many ran."""
    from .resources import subscriptions as subs

    clock_id = clock["id"] if clock else None
    steps = 0
    while steps < MAX_STEPS:
        nxt = next_action(st, clock_id)
        if nxt is None or nxt[0] > target:
            break
        t, action, obj = nxt
        if clock is not None:
            clock["_now"] = max(t, clock.get("_now") or 0)
        steps += 1
        if action == "finalize":
            finalize(st, obj, t)
        elif action == "retry":
            attempt_payment(st, obj, t, automatic=True)
        elif action == "trial_will_end":
            obj["_trial_will_end_sent"] = True
            emit(st, "customer.subscription.trial_will_end", obj, created=t)
        elif action == "trial_end":
            subs.end_trial(st, obj, t)
        elif action == "renew":
            subs.renew(st, obj, t)
        elif action == "cancel":
            subs.end_as_scheduled(st, obj, t)
        elif action == "expire":
            subs.expire_incomplete(st, obj, t)
        st.due.touch(obj["id"])  # acted on: its next due work follows from what it is now
    return steps
