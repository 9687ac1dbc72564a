"""The current state of Stripe invoices, subscriptions and events, read through a StripeClient.

Handlers decide on what these return, never on an event's snapshot: Stripe delivers events at
least once and in any order, but a retrieve is always the newest truth.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.stripe.client import retry_reads
from billing_pipelines.lib.stripe.objects import object_id, timestamp

if TYPE_CHECKING:
    import stripe


@dataclass(frozen=True)
class InvoiceLine:
    """One invoice line: its price and quantity (metered lines carry the period's usage)."""

    price_id: str | None
    quantity: int | None
    amount: int
    metered: bool
    # The price's lookup key (which plan it belongs to) and the line's own period: a plan
    # change bills one period in parts, each line at its own price for its own dates.
    lookup_key: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclass(frozen=True)
class InvoiceView:
    """The fields of a Stripe invoice that billing decisions read."""

    id: str
    customer: str
    subscription: str | None
    status: str
    attempt_count: int
    amount_due: int
    amount_remaining: int
    currency: str
    number: str | None
    hosted_invoice_url: str | None
    next_payment_attempt: datetime | None
    period_start: datetime | None
    period_end: datetime | None
    lines: tuple[InvoiceLine, ...]
    last_finalization_error: str | None
    # Before tax, Stripe Tax's tax and after tax; whether automatic tax was on for it.
    subtotal: int | None = None
    tax: int = 0
    total: int | None = None
    automatic_tax: bool = False

    @property
    def settled(self) -> bool:
        """Paid or void: nothing is owed, dunning must stop."""
        return self.status in ("paid", "void")

    @property
    def metered_quantity(self) -> int | None:
        """Total metered usage billed on this invoice (None if it has no metered line)."""
        metered = [line.quantity or 0 for line in self.lines if line.metered]
        return sum(metered) if metered else None


@retry_reads
def _price_facts(
    client: stripe.StripeClient, price_id: str | None, cache: dict[str, tuple[bool, str | None]]
) -> tuple[bool, str | None]:
    """(metered, lookup_key) of a price, read once per invoice."""
    if not price_id:
        return False, None
    if price_id not in cache:
        price = client.v1.prices.retrieve(price_id).to_dict()
        metered = (price.get("recurring") or {}).get("usage_type") == "metered"
        cache[price_id] = (metered, price.get("lookup_key"))
    return cache[price_id]


@retry_reads
def fetch_invoice(
    client: stripe.StripeClient, invoice_id: str, *, with_lines: bool = False
) -> InvoiceView:
    """Retrieve the invoice now; `with_lines` also resolves which lines are metered."""
    raw = client.v1.invoices.retrieve(invoice_id).to_dict()
    parent = raw.get("parent") or {}
    details = parent.get("subscription_details") or {}
    lines: list[InvoiceLine] = []
    if with_lines:
        cache: dict[str, tuple[bool, str | None]] = {}
        for line in (raw.get("lines") or {}).get("data") or []:
            pricing = (line.get("pricing") or {}).get("price_details") or {}
            price_id = object_id(pricing.get("price"))
            metered, lookup_key = _price_facts(client, price_id, cache)
            period = line.get("period") or {}
            lines.append(
                InvoiceLine(
                    price_id=price_id,
                    quantity=line.get("quantity"),
                    amount=int(line.get("amount") or 0),
                    metered=metered,
                    lookup_key=lookup_key,
                    period_start=timestamp(period.get("start")),
                    period_end=timestamp(period.get("end")),
                )
            )
    error = raw.get("last_finalization_error")
    return InvoiceView(
        id=raw["id"],
        customer=str(object_id(raw.get("customer"))),
        subscription=object_id(details.get("subscription")),
        status=str(raw.get("status")),
        attempt_count=int(raw.get("attempt_count") or 0),
        amount_due=int(raw.get("amount_due") or 0),
        amount_remaining=int(raw.get("amount_remaining") or 0),
        currency=str(raw.get("currency") or "usd"),
        number=raw.get("number"),
        hosted_invoice_url=raw.get("hosted_invoice_url"),
        next_payment_attempt=timestamp(raw.get("next_payment_attempt")),
        period_start=timestamp(raw.get("period_start")),
        period_end=timestamp(raw.get("period_end")),
        lines=tuple(lines),
        last_finalization_error=(error or {}).get("message") if isinstance(error, dict) else None,
        subtotal=None if raw.get("subtotal") is None else int(raw["subtotal"]),
        tax=sum(int(t.get("amount") or 0) for t in raw.get("total_taxes") or []),
        total=None if raw.get("total") is None else int(raw["total"]),
        automatic_tax=bool((raw.get("automatic_tax") or {}).get("enabled")),
    )


@dataclass(frozen=True)
class SubscriptionView:
    """The fields of a Stripe subscription that tenant state reads."""

    id: str
    customer: str
    status: str
    trial_end: datetime | None
    has_payment_method: bool
    plan: str | None
    missing_payment_method_behavior: str | None
    # "annual" when the base fee is a yearly price (usage stays monthly either way).
    billing_cycle: str = "monthly"


def billing_cycle_of(raw: dict[str, Any]) -> str:
    """ "annual" when a licensed (base fee) item bills yearly, else "monthly"."""
    for item in (raw.get("items") or {}).get("data") or []:
        recurring = (item.get("price") or {}).get("recurring") or {}
        if recurring.get("usage_type") == "licensed" and recurring.get("interval") == "year":
            return "annual"
    return "monthly"


def _plan_of(raw: dict[str, Any], known_plans: set[str]) -> str | None:
    metadata = raw.get("metadata") or {}
    if metadata.get("plan") in known_plans:
        return str(metadata["plan"])
    for item in (raw.get("items") or {}).get("data") or []:
        price = item.get("price") or {}
        key = (price.get("metadata") or {}).get("plan") or price.get("lookup_key") or ""
        # Lookup keys are "<plan>_<component>" (e.g. pro_base, pro_queries).
        head = str(key).split("_", 1)[0]
        if head in known_plans:
            return head
    return None


@retry_reads
def fetch_subscription(
    client: stripe.StripeClient, subscription_id: str, *, known_plans: set[str]
) -> SubscriptionView:
    """Retrieve the subscription now, with whether any default payment method would be used."""
    raw = client.v1.subscriptions.retrieve(subscription_id).to_dict()
    customer_id = str(object_id(raw.get("customer")))
    has_pm = bool(raw.get("default_payment_method"))
    if not has_pm:
        customer = client.v1.customers.retrieve(customer_id).to_dict()
        has_pm = bool((customer.get("invoice_settings") or {}).get("default_payment_method"))
    trial = ((raw.get("trial_settings") or {}).get("end_behavior") or {}).get(
        "missing_payment_method"
    )
    return SubscriptionView(
        id=raw["id"],
        customer=customer_id,
        status=str(raw.get("status")),
        trial_end=timestamp(raw.get("trial_end")),
        has_payment_method=has_pm,
        plan=_plan_of(raw, known_plans),
        billing_cycle=billing_cycle_of(raw),
        missing_payment_method_behavior=trial,
    )


def events_since(
    client: stripe.StripeClient, since: datetime, types: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Every event created at or after `since` (Stripe keeps 30 days), newest first."""
    params: stripe.params.EventListParams = {
        "created": {"gte": int(since.timestamp())},
        "limit": 100,
    }
    if types:
        params["types"] = types
    # Page by page, each page retried on its own: a 429 on page 7 asks for page 7 again.
    while True:
        page = _events_page(client, params)
        for event in page.data:
            yield event.to_dict(for_json=True)
        if not page.has_more or not page.data:
            return
        params = {**params, "starting_after": page.data[-1].id}


@retry_reads
def _events_page(
    client: stripe.StripeClient, params: stripe.params.EventListParams
) -> stripe.ListObject[stripe.Event]:
    return client.v1.events.list(params)
