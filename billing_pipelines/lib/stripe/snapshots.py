"""Every Stripe customer, subscription and invoice (with lines), listed as snapshot rows.

Read through a StripeClient with auto-paging (100 per page) and only the expansions needed
(`data.latest_invoice` for subscriptions). Each page is retried on its own, so a 429 or a 5xx
in the middle of a listing asks for that page again without skipping or repeating objects.
Storing the rows is the reconciliation's business (`reconciliation.snapshots`).
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

PAGE = 100


@dataclass(frozen=True)
class CustomerSnapshot:
    """One Stripe customer: who it says it is, and whether it can be charged automatically."""

    customer_id: str
    email: str | None
    metadata_tenant_id: str | None
    has_default_payment_method: bool
    created: datetime | None


@dataclass(frozen=True)
class SubscriptionSnapshot:
    """One Stripe subscription as reconciliation reads it (any status)."""

    subscription_id: str
    customer_id: str
    status: str
    plan: str | None
    price_ids: list[str]
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    trial_end_behavior: str | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    has_payment_method: bool
    latest_invoice_id: str | None
    latest_invoice_status: str | None
    latest_invoice_attempt_count: int | None
    created: datetime | None
    # When a scheduled cancellation takes effect: set by `cancel_at_period_end` (the period's
    # end) and by `cancel_at` (an instant, or `max_period_end` for an annual tenant's mixed
    # interval subscription, where `cancel_at_period_end` stays false).
    cancel_at: datetime | None = None


@dataclass(frozen=True)
class InvoiceSnapshot:
    """One Stripe invoice's header: status, amounts, attempts, period and finalization."""

    invoice_id: str
    customer_id: str
    subscription_id: str | None
    status: str
    billing_reason: str | None
    number: str | None
    currency: str
    amount_due: int
    amount_paid: int
    amount_remaining: int
    attempt_count: int
    attempted: bool
    period_start: datetime | None
    period_end: datetime | None
    created: datetime | None
    finalized_at: datetime | None
    paid_at: datetime | None
    automatically_finalizes_at: datetime | None
    finalization_error: str | None
    # Before tax, the tax (the sum of `total_taxes`) and after tax: what the invoice shows.
    subtotal: int | None = None
    tax: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class InvoiceLineSnapshot:
    """One invoice line: its price, whether it is metered usage, quantity, amount and period."""

    invoice_id: str
    line_id: str
    price_id: str | None
    metered: bool
    meter_id: str | None
    quantity: int | None
    amount: int
    period_start: datetime | None
    period_end: datetime | None
    description: str | None
    # The line's tax (the sum of its `taxes`); `amount` is always before tax.
    tax: int = 0


@dataclass
class StripeSnapshot:
    """Everything one snapshot run read from Stripe."""

    customers: list[CustomerSnapshot]
    subscriptions: list[SubscriptionSnapshot]


@dataclass
class InvoiceSnapshotSet:
    """Invoices and their lines from one snapshot run."""

    invoices: list[InvoiceSnapshot]
    lines: list[InvoiceLineSnapshot]


# ---- listing -----------------------------------------------------------------------------------


@retry_reads
def _page(client: stripe.StripeClient, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """One page of a list endpoint; a 429 or a 5xx asks for the same page again."""
    return dict(client.raw_request("get", path, **params).data)


def pages(
    client: stripe.StripeClient, path: str, params: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Every object of a list endpoint, auto-paged with `starting_after`, as plain dicts.

    Snapshots read tens of thousands of objects: the SDK's raw request (same auth, retries,
    idempotency and error mapping as its typed services) skips building a StripeObject per
    nested field, which is most of the client's time at that size.
    """
    cursor: str | None = None
    while True:
        page_params = {**params, "limit": PAGE}
        if cursor:
            page_params["starting_after"] = cursor
        body = _page(client, path, page_params)
        data = body.get("data") or []
        yield from data
        if not body.get("has_more") or not data:
            return
        cursor = str(data[-1]["id"])


def plan_of(price: dict[str, Any], known_plans: set[str]) -> str | None:
    """The catalog plan a price belongs to: its metadata `plan`, else its lookup key prefix."""
    plan = (price.get("metadata") or {}).get("plan")
    if plan in known_plans:
        return str(plan)
    head = str(price.get("lookup_key") or "").split("_", 1)[0]
    return head if head in known_plans else None


def fetch_customers(client: stripe.StripeClient) -> Iterator[CustomerSnapshot]:
    """Every customer, auto-paged."""
    for raw in pages(client, "/v1/customers", {}):
        yield CustomerSnapshot(
            customer_id=raw["id"],
            email=raw.get("email"),
            metadata_tenant_id=(raw.get("metadata") or {}).get("tenant_id"),
            has_default_payment_method=bool(
                (raw.get("invoice_settings") or {}).get("default_payment_method")
            ),
            created=timestamp(raw.get("created")),
        )


def subscription_snapshot(
    raw: dict[str, Any], customer_has_pm: bool, known_plans: set[str]
) -> SubscriptionSnapshot:
    """The snapshot row of one listed subscription (its latest invoice expanded)."""
    items = (raw.get("items") or {}).get("data") or []
    plans = [plan_of(item.get("price") or {}, known_plans) for item in items]
    plan = (raw.get("metadata") or {}).get("plan")
    if plan not in known_plans:
        plan = next((p for p in plans if p), None)
    starts = [int(i["current_period_start"]) for i in items if i.get("current_period_start")]
    ends = [int(i["current_period_end"]) for i in items if i.get("current_period_end")]
    latest = raw.get("latest_invoice")
    latest_raw = latest if isinstance(latest, dict) else {}
    behavior = ((raw.get("trial_settings") or {}).get("end_behavior") or {}).get(
        "missing_payment_method"
    )
    return SubscriptionSnapshot(
        subscription_id=raw["id"],
        customer_id=str(object_id(raw.get("customer"))),
        status=str(raw.get("status")),
        plan=plan,
        price_ids=[str(object_id(i.get("price"))) for i in items if i.get("price")],
        current_period_start=timestamp(min(starts)) if starts else None,
        current_period_end=timestamp(max(ends)) if ends else None,
        trial_end=timestamp(raw.get("trial_end")),
        trial_end_behavior=behavior,
        cancel_at_period_end=bool(raw.get("cancel_at_period_end")),
        canceled_at=timestamp(raw.get("canceled_at")),
        ended_at=timestamp(raw.get("ended_at")),
        has_payment_method=bool(raw.get("default_payment_method")) or customer_has_pm,
        latest_invoice_id=object_id(latest),
        latest_invoice_status=latest_raw.get("status"),
        latest_invoice_attempt_count=(
            int(latest_raw.get("attempt_count") or 0) if latest_raw else None
        ),
        created=timestamp(raw.get("created")),
        cancel_at=timestamp(raw.get("cancel_at")),
    )


def fetch_state(client: stripe.StripeClient, known_plans: set[str]) -> StripeSnapshot:
    """All customers and all subscriptions (every status), with each latest invoice expanded."""
    customers = list(fetch_customers(client))
    has_pm = {c.customer_id: c.has_default_payment_method for c in customers}
    listed = pages(
        client, "/v1/subscriptions", {"status": "all", "expand": ["data.latest_invoice"]}
    )
    subscriptions = [
        subscription_snapshot(
            raw, has_pm.get(str(object_id(raw.get("customer"))), False), known_plans
        )
        for raw in listed
    ]
    return StripeSnapshot(customers, subscriptions)


def _metered_prices(client: stripe.StripeClient) -> dict[str, str | None]:
    """Metered price id -> its meter id, for every price (active or not)."""
    out: dict[str, str | None] = {}
    for price in pages(client, "/v1/prices", {}):
        recurring = price.get("recurring") or {}
        if recurring.get("usage_type") == "metered":
            out[str(price["id"])] = recurring.get("meter")
    return out


def invoice_snapshot(raw: dict[str, Any]) -> InvoiceSnapshot:
    """The header row of one invoice (subscription under parent.subscription_details)."""
    details = (raw.get("parent") or {}).get("subscription_details") or {}
    transitions = raw.get("status_transitions") or {}
    error = raw.get("last_finalization_error")
    return InvoiceSnapshot(
        invoice_id=raw["id"],
        customer_id=str(object_id(raw.get("customer"))),
        subscription_id=object_id(details.get("subscription")),
        status=str(raw.get("status")),
        billing_reason=raw.get("billing_reason"),
        number=raw.get("number"),
        currency=str(raw.get("currency") or "usd"),
        amount_due=int(raw.get("amount_due") or 0),
        amount_paid=int(raw.get("amount_paid") or 0),
        amount_remaining=int(raw.get("amount_remaining") or 0),
        attempt_count=int(raw.get("attempt_count") or 0),
        attempted=bool(raw.get("attempted")),
        period_start=timestamp(raw.get("period_start")),
        period_end=timestamp(raw.get("period_end")),
        created=timestamp(raw.get("created")),
        finalized_at=timestamp(transitions.get("finalized_at")),
        paid_at=timestamp(transitions.get("paid_at")),
        automatically_finalizes_at=timestamp(raw.get("automatically_finalizes_at")),
        finalization_error=(error or {}).get("message") if isinstance(error, dict) else None,
        subtotal=int(raw.get("subtotal") or 0),
        tax=tax_cents(raw.get("total_taxes")),
        total=int(raw.get("total") or 0),
    )


def tax_cents(taxes: Any) -> int:
    """The tax of an invoice or line: the sum of its taxes' amounts (docs.stripe.com/api/invoices
    /object: `total_taxes` on the invoice, `taxes` on each line; exclusive and inclusive alike)."""
    return sum(int(t.get("amount") or 0) for t in taxes or [])


def line_snapshot(
    invoice_id: str, line: dict[str, Any], metered: dict[str, str | None]
) -> InvoiceLineSnapshot:
    """One invoice line (price under pricing.price_details at this API version)."""
    price_id = object_id(((line.get("pricing") or {}).get("price_details") or {}).get("price"))
    period = line.get("period") or {}
    quantity = line.get("quantity")
    return InvoiceLineSnapshot(
        invoice_id=invoice_id,
        line_id=str(line["id"]),
        price_id=price_id,
        metered=price_id in metered,
        meter_id=metered.get(price_id) if price_id else None,
        quantity=None if quantity is None else int(quantity),
        amount=int(line.get("amount") or 0),
        period_start=timestamp(period.get("start")),
        period_end=timestamp(period.get("end")),
        description=line.get("description"),
        tax=tax_cents(line.get("taxes")),
    )


def fetch_invoices(client: stripe.StripeClient) -> InvoiceSnapshotSet:
    """Every invoice with all its lines (further pages of lines fetched when there are more)."""
    metered = _metered_prices(client)
    invoices: list[InvoiceSnapshot] = []
    lines: list[InvoiceLineSnapshot] = []
    for raw in pages(client, "/v1/invoices", {}):
        invoices.append(invoice_snapshot(raw))
        embedded = raw.get("lines") or {}
        data = list(embedded.get("data") or [])
        if embedded.get("has_more"):
            data = list(pages(client, f"/v1/invoices/{raw['id']}/lines", {}))
        lines.extend(line_snapshot(raw["id"], ln, metered) for ln in data)
    return InvoiceSnapshotSet(invoices, lines)
