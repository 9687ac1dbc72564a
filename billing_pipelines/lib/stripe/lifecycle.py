"""The Stripe calls behind subscription lifecycle actions: customers, cards, subscriptions, portal.

Every create or change that a retried action could repeat carries an idempotency key derived
from business ids (tenant, plan, proration date, predecessor subscription), so a retry replays
Stripe's first answer instead of creating a second customer or subscription. The decisions
(which plan, whether to charge now, what the tenant row says) stay with `lifecycle.actions`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.stripe.objects import ENDED_STATUSES
from billing_pipelines.lib.stripe.tax import CustomerTax, invalid_request_error, refused_location

if TYPE_CHECKING:
    import stripe

# How every subscription bills changes, and how a paused one resumes (see the functions below).
BILLING_MODE = "flexible"
RESUME_PAYMENT_BEHAVIOR = "resume_on_payment_success"


@dataclass(frozen=True)
class SubscriptionItem:
    """One item of a subscription: which price it bills and whether that price is metered."""

    id: str
    price_id: str
    usage_type: str | None  # licensed (the base fee) or metered (usage)
    interval: str | None = None  # month or year (a yearly base fee: the annual cycle)


@dataclass(frozen=True)
class LiveSubscription:
    """A subscription as lifecycle actions decide on it, read from Stripe now."""

    id: str
    status: str
    cancel_at_period_end: bool
    items: tuple[SubscriptionItem, ...]
    billing_mode: str = BILLING_MODE
    # A scheduled end by timestamp (an annual tenant cancels at the end of its paid year).
    cancel_at: int | None = None

    @property
    def billing_cycle(self) -> str:
        """ "annual" when the base fee item bills yearly; usage bills monthly either way."""
        yearly = any(i.usage_type == "licensed" and i.interval == "year" for i in self.items)
        return "annual" if yearly else "monthly"

    @property
    def ended(self) -> bool:
        """Canceled or expired: billing the tenant again needs a new subscription."""
        return self.status in ENDED_STATUSES


@dataclass(frozen=True)
class ItemPrice:
    """A subscription item moved to another price (a plan change replaces prices in place)."""

    item_id: str
    price_id: str


@dataclass(frozen=True)
class PreviewLine:
    """One line of a previewed invoice: which price, how many units, which period."""

    description: str
    amount: int
    price_id: str | None
    quantity: int | None
    period_start: int
    period_end: int


@dataclass(frozen=True)
class InvoicePreview:
    """The invoice Stripe would issue: what is due and the (description, amount) of each line."""

    amount_due: int
    currency: str
    lines: list[tuple[str, int]]
    detail: tuple[PreviewLine, ...] = ()
    # Before tax, the tax (Stripe Tax's `total_taxes`, summed) and after tax.
    subtotal: int | None = None
    tax: int = 0
    total: int | None = None
    automatic_tax: bool = False


# ---- customers and cards -----------------------------------------------------------------------


def _search_literal(value: str) -> str:
    # Stripe's search language quotes with ' and escapes with a backslash.
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_or_create_customer(
    client: stripe.StripeClient,
    *,
    tenant_id: str,
    name: str,
    email: str,
    test_clock: str | None = None,
    tax: CustomerTax | None = None,
) -> str:
    """The tenant's Stripe customer, found by its `tenant_id` metadata or created; its id.

    With `tax`, the customer is created with its billing address and tax ids, and Stripe
    validates the location first: a refusal raises `TaxLocationRefused` and creates nothing.
    """
    found = client.v1.customers.search(
        {"query": f"metadata['tenant_id']:'{_search_literal(tenant_id)}'"}
    )
    if found.data:
        return str(found.data[0].id)
    params: dict[str, Any] = {"email": email, "name": name, "metadata": {"tenant_id": tenant_id}}
    if test_clock:
        params["test_clock"] = test_clock
    if tax is not None:
        params.update(tax.params())
        if tax.tax_id_data:
            params["tax_id_data"] = [dict(t) for t in tax.tax_id_data]
    try:
        customer = client.v1.customers.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": f"onboard:{tenant_id}:customer"},
        )
    except invalid_request_error() as exc:
        refused = refused_location(exc)
        if refused is None:
            raise
        raise refused from None
    return str(customer.id)


def attach_default_card(client: stripe.StripeClient, customer_id: str, payment_method: str) -> str:
    """Attach a card to the customer and make it the default for invoices; returns its id."""
    attached = client.v1.payment_methods.attach(payment_method, {"customer": customer_id})
    client.v1.customers.update(
        customer_id, {"invoice_settings": {"default_payment_method": attached.id}}
    )
    return str(attached.id)


def customer_now(client: stripe.StripeClient, customer_id: str) -> int:
    """Now, in the customer's time: a test clock's frozen time when it has one."""
    customer = client.v1.customers.retrieve(customer_id)
    clock = getattr(customer, "test_clock", None)
    if clock:
        clock_id = clock if isinstance(clock, str) else clock.id
        return int(client.v1.test_helpers.test_clocks.retrieve(clock_id).frozen_time)
    return int(time.time())


def portal_session_url(client: stripe.StripeClient, customer_id: str, return_url: str) -> str:
    """A customer-portal link where the customer updates cards and downloads invoices."""
    session = client.v1.billing_portal.sessions.create(
        {"customer": customer_id, "return_url": return_url}
    )
    return str(session.url)


# ---- prices and subscriptions ------------------------------------------------------------------


def active_price_ids(client: stripe.StripeClient, lookup_keys: Sequence[str]) -> dict[str, str]:
    """Active price ids by lookup key; keys without an active price are absent."""
    listed = client.v1.prices.list(
        {"lookup_keys": list(lookup_keys), "active": True, "limit": len(lookup_keys)}
    )
    return {str(p.lookup_key): str(p.id) for p in listed.data if p.lookup_key}


def retrieve_subscription(client: stripe.StripeClient, subscription_id: str) -> LiveSubscription:
    """The subscription's status, pending cancellation and items, read now."""
    raw = client.v1.subscriptions.retrieve(subscription_id).to_dict()
    items = tuple(
        SubscriptionItem(
            id=str(item["id"]),
            price_id=str(item["price"]["id"]),
            usage_type=(item["price"].get("recurring") or {}).get("usage_type"),
            interval=(item["price"].get("recurring") or {}).get("interval"),
        )
        for item in (raw.get("items") or {}).get("data") or []
    )
    return LiveSubscription(
        id=str(raw["id"]),
        status=str(raw.get("status")),
        cancel_at_period_end=bool(raw.get("cancel_at_period_end")),
        items=items,
        # Absent on API versions before billing modes existed: those subscriptions are classic.
        billing_mode=str((raw.get("billing_mode") or {}).get("type") or "classic"),
        cancel_at=int(raw["cancel_at"]) if raw.get("cancel_at") else None,
    )


def find_live_subscription(
    client: stripe.StripeClient, *, customer_id: str, tenant_id: str
) -> str | None:
    """The customer's not-ended subscription made for this tenant (metadata), newest first.

    A list by customer (docs.stripe.com/api/subscriptions/list: `status=all` includes canceled
    ones, which are skipped here), not a search: search is eventually consistent and could miss
    a subscription created seconds before a crash, while a list reads what Stripe holds now.
    """
    found = client.v1.subscriptions.list({"customer": customer_id, "status": "all", "limit": 100})
    mine = [
        raw
        for raw in (sub.to_dict() for sub in found.auto_paging_iter())
        if (raw.get("metadata") or {}).get("tenant_id") == tenant_id
        and str(raw.get("status")) not in ENDED_STATUSES
    ]
    if not mine:
        return None
    return str(max(mine, key=lambda raw: (int(raw["created"]), str(raw["id"])))["id"])


def create_subscription(
    client: stripe.StripeClient,
    *,
    tenant_id: str,
    customer_id: str,
    plan_key: str,
    price_ids: Sequence[str],
    predecessor: str | None,
    trial_days: int | None = None,
    trial_end_behavior: str | None = None,
    billing_cycle: str = "monthly",
    automatic_tax: bool = False,
) -> str:
    """Subscribe the customer to the plan's prices (with a trial when `trial_days` is given).

    An annual tenant's subscription holds a yearly base price beside the monthly metered one:
    a mixed interval subscription, which needs flexible billing mode (set below); Stripe bills
    each item on its own period (docs.stripe.com/billing/subscriptions/mixed-interval).
    `automatic_tax`: Stripe Tax computes the tax of every invoice of the subscription from the
    customer's location (docs.stripe.com/billing/taxes/collect-taxes).
    """
    params: dict[str, Any] = {
        "customer": customer_id,
        "items": [{"price": price} for price in price_ids],
        "metadata": {"tenant_id": tenant_id, "plan": plan_key, "billing_cycle": billing_cycle},
        # A failed first charge leaves an `incomplete` subscription (no access) instead of an
        # API error, so the tenant row always records what Stripe holds.
        "payment_behavior": "allow_incomplete",
        # Explicit, never the account's or API version's default: in flexible mode a metered
        # price replaced mid-period bills its usage so far at its own price; classic mode would
        # drop that usage (docs.stripe.com/billing/subscriptions/billing-mode/compare).
        "billing_mode": {"type": BILLING_MODE},
    }
    if automatic_tax:
        params["automatic_tax"] = {"enabled": True}
    if trial_days is not None:
        params["trial_period_days"] = trial_days
        params["trial_settings"] = {"end_behavior": {"missing_payment_method": trial_end_behavior}}
    try:
        subscription = client.v1.subscriptions.create(
            params,  # type: ignore[arg-type]
            # One subscription per tenant and predecessor: a retry replays, a re-subscription
            # after a cancellation gets a new key.
            {"idempotency_key": f"onboard:{tenant_id}:subscription:{predecessor or 'first'}"},
        )
    except invalid_request_error() as exc:
        refused = refused_location(exc)
        if refused is None:
            raise
        raise refused from None
    return str(subscription.id)


def _item_changes(changes: Sequence[ItemPrice]) -> list[dict[str, str]]:
    return [{"id": change.item_id, "price": change.price_id} for change in changes]


def preview_price_change(
    client: stripe.StripeClient,
    *,
    customer_id: str,
    subscription_id: str,
    changes: Sequence[ItemPrice],
    proration_date: int,
    proration_behavior: str,
) -> InvoicePreview:
    """Stripe's own preview of the invoice a price change would produce (nothing changes)."""
    preview = client.v1.invoices.create_preview(
        {
            "customer": customer_id,
            "subscription": subscription_id,
            "subscription_details": {
                "items": _item_changes(changes),
                "proration_date": proration_date,
                "proration_behavior": proration_behavior,
            },
        }  # type: ignore[arg-type]
    )
    detail = []
    for line in preview.lines.data:
        pricing = line.to_dict().get("pricing") or {}
        price = (pricing.get("price_details") or {}).get("price")
        detail.append(
            PreviewLine(
                description=str(line.description),
                amount=int(line.amount),
                price_id=price if isinstance(price, str) or price is None else str(price["id"]),
                quantity=None if line.quantity is None else int(line.quantity),
                period_start=int(line.period.start),
                period_end=int(line.period.end),
            )
        )
    raw = preview.to_dict()
    taxes = raw.get("total_taxes") or []
    return InvoicePreview(
        amount_due=int(preview.amount_due),
        currency=str(preview.currency),
        lines=[(d.description, d.amount) for d in detail],
        detail=tuple(detail),
        subtotal=None if raw.get("subtotal") is None else int(raw["subtotal"]),
        tax=sum(int(t.get("amount") or 0) for t in taxes),
        total=None if raw.get("total") is None else int(raw["total"]),
        automatic_tax=bool((raw.get("automatic_tax") or {}).get("enabled")),
    )


def change_prices(
    client: stripe.StripeClient,
    *,
    tenant_id: str,
    subscription_id: str,
    plan_key: str,
    changes: Sequence[ItemPrice],
    proration_date: int,
    proration_behavior: str,
    billing_cycle: str = "monthly",
) -> None:
    """Move the subscription to the plan's prices at the proration date a preview used."""
    client.v1.subscriptions.update(
        subscription_id,
        {
            "items": _item_changes(changes),
            "proration_date": proration_date,
            "proration_behavior": proration_behavior,
            "metadata": {"plan": plan_key, "billing_cycle": billing_cycle},
        },  # type: ignore[arg-type]
        {
            "idempotency_key": (
                f"change_plan:{tenant_id}:{plan_key}:{billing_cycle}:{proration_date}"
            )
        },
    )


def cancel_now(client: stripe.StripeClient, subscription_id: str) -> None:
    """End the subscription now with a final invoice: unbilled usage, minus unused base fee.

    Without `invoice_now` Stripe discards the period's unbilled metered usage; `prorate` credits
    the unused part of the base fee paid in advance on that same final invoice
    (docs.stripe.com/api/subscriptions/cancel).
    """
    client.v1.subscriptions.cancel(subscription_id, {"invoice_now": True, "prorate": True})


def set_cancel_at_period_end(
    client: stripe.StripeClient, subscription_id: str, cancel: bool, *, annual: bool = False
) -> None:
    """Schedule (True) or withdraw (False) the cancellation at the end of the current period.

    For an annual tenant "the end of the period" is the end of the year already paid for:
    `cancel_at_period_end` on a mixed interval subscription "always resolves to the earliest
    item period end" (the monthly usage item's), so it is scheduled with
    `cancel_at=max_period_end`, the latest item period end
    (docs.stripe.com/changelog/basil/2025-07-30/cancel-at-enums).
    """
    if annual and cancel:
        client.v1.subscriptions.update(
            subscription_id, {"cancel_at_period_end": False, "cancel_at": "max_period_end"}
        )
    elif annual:
        client.v1.subscriptions.update(
            subscription_id, {"cancel_at_period_end": False, "cancel_at": ""}
        )
    else:
        client.v1.subscriptions.update(subscription_id, {"cancel_at_period_end": cancel})


def resume(client: stripe.StripeClient, subscription_id: str) -> None:
    """Resume a paused subscription once its first invoice is paid; the cycle restarts now.

    `resume_on_payment_success` charges during the request, keeps the subscription paused (no
    access) until the invoice is paid, and lets Stripe retry a failed payment, so the dunning
    ladder sees real attempts. The default, `resume_on_payment_attempt`, would resume at once
    and never retry a failed payment (docs.stripe.com/api/subscriptions/resume).
    """
    client.v1.subscriptions.resume(subscription_id, {"payment_behavior": RESUME_PAYMENT_BEHAVIOR})


# ---- invoices ----------------------------------------------------------------------------------


def open_invoice_ids(client: stripe.StripeClient, customer_id: str) -> list[str]:
    """The customer's open (finalized, unpaid) invoices, up to 100."""
    listed = client.v1.invoices.list({"customer": customer_id, "status": "open", "limit": 100})
    ids = []
    for invoice in listed.data:
        assert invoice.id is not None
        ids.append(invoice.id)
    return ids


def pay_invoice(client: stripe.StripeClient, invoice_id: str, payment_method: str) -> None:
    """Charge an open invoice to this payment method now; a decline raises `client.CardError`."""
    client.v1.invoices.pay(invoice_id, {"payment_method": payment_method})
