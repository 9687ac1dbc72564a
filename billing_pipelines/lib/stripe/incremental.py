"""What changed in Stripe since the previous snapshot: invoices and subscriptions to read again.

A full pass lists every invoice and subscription ever; its cost grows with history. An
incremental pass reads only what can have changed, from what Stripe lets a list filter on
(docs.stripe.com/api/invoices/list: `created`, `status`; /api/subscriptions/list: `created`,
`status`, default "subscriptions that have not been canceled"):

- objects created since the previous pass (`created[gte]` at its frontier, below);
- invoices that are still `draft`, `open` or `uncollectible` (the statuses that can still move:
  docs.stripe.com/invoicing/overview), listed by status;
- subscriptions that are not canceled (the default list);
- each object the previous snapshot held in a status that could move and that the listings
  above no longer return, read by id: an open invoice since paid or voided, a draft deleted
  (404: gone), a subscription since cancelled, an ended subscription whose latest invoice was
  not final yet.

Everything else (paid and void invoices, ended subscriptions whose latest invoice is final) is
final in every column the snapshot keeps, so the previous row is carried forward. Search is
not used: its index lags writes by up to a minute (docs.stripe.com/search).

The frontier: an object created after a pass started has `created` at or after that instant in
real time (with a margin for the two machines' clocks), or at or after its test clock's frozen
time at that pass (a clock only moves forward and stamps objects with its own time). A test
clock the previous pass did not see has no frontier: the caller runs a full pass then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.stripe.client import retry_reads
from billing_pipelines.lib.stripe.objects import ENDED_STATUSES, object_id
from billing_pipelines.lib.stripe.snapshots import (
    CustomerSnapshot,
    InvoiceLineSnapshot,
    InvoiceSnapshot,
    SubscriptionSnapshot,
    _metered_prices,
    fetch_customers,
    invoice_snapshot,
    line_snapshot,
    pages,
    subscription_snapshot,
)

if TYPE_CHECKING:  # the definitions import this module; the SDK loads when a pass runs
    import stripe

# Invoice statuses that can still change (draft -> open -> paid | void | uncollectible, and
# uncollectible -> paid | void); paid and void are final.
MOVABLE_INVOICE_STATUSES = ("draft", "open", "uncollectible")
# Seconds our clock may run ahead of Stripe's: objects created just before a pass started are
# read again rather than missed.
CLOCK_MARGIN_SECONDS = 600


@dataclass(frozen=True)
class Frontier:
    """Where a pass stood when it started: real time, and each test clock's frozen time."""

    wall_started: int
    clocks: dict[str, int] = field(default_factory=dict)

    def since(self) -> int:
        """The earliest `created` an object made after this pass started can carry."""
        return min([self.wall_started - CLOCK_MARGIN_SECONDS, *self.clocks.values()])

    def unseen_clocks(self, now: Frontier) -> list[str]:
        """Test clocks that exist now and that this pass did not see (no frontier for them)."""
        return sorted(set(now.clocks) - set(self.clocks))


def frontier_now(client: stripe.StripeClient, wall_now: int, test_mode: bool) -> Frontier:
    """The frontier of a pass starting now; test clocks exist only for test-mode keys."""
    clocks: dict[str, int] = {}
    if test_mode:
        for clock in pages(client, "/v1/test_helpers/test_clocks", {}):
            clocks[str(clock["id"])] = int(clock["frozen_time"])
    return Frontier(wall_now, clocks)


@retry_reads
def _retrieve(client: stripe.StripeClient, path: str, params: dict[str, Any]) -> dict[str, Any]:
    return dict(client.raw_request("get", path, **params).data)


def retrieve_or_none(
    client: stripe.StripeClient, path: str, params: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """One object by id, or None when Stripe no longer has it (a deleted draft invoice)."""
    try:
        return _retrieve(client, path, params or {})
    except _sdk().InvalidRequestError as exc:
        if exc.http_status == 404:
            return None
        raise


@dataclass
class InvoiceChanges:
    """Invoices read again (with all their lines), and ids Stripe no longer has."""

    invoices: list[InvoiceSnapshot]
    lines: list[InvoiceLineSnapshot]
    gone: set[str]
    read_by_id: int


def _lines_of(client: stripe.StripeClient, raw: dict[str, Any]) -> list[dict[str, Any]]:
    embedded = raw.get("lines") or {}
    data = list(embedded.get("data") or [])
    if embedded.get("has_more"):
        data = list(pages(client, f"/v1/invoices/{raw['id']}/lines", {}))
    return data


def fetch_invoice_changes(
    client: stripe.StripeClient, since: int, recheck: set[str]
) -> InvoiceChanges:
    """Invoices created since `since`, every movable one, and each of `recheck` not listed."""
    raw_by_id: dict[str, dict[str, Any]] = {}
    for raw in pages(client, "/v1/invoices", {"created": {"gte": since}}):
        raw_by_id[str(raw["id"])] = raw
    for status in MOVABLE_INVOICE_STATUSES:
        for raw in pages(client, "/v1/invoices", {"status": status}):
            raw_by_id[str(raw["id"])] = raw
    gone: set[str] = set()
    missing = sorted(recheck - set(raw_by_id))
    for invoice_id in missing:
        got = retrieve_or_none(client, f"/v1/invoices/{invoice_id}")
        if got is None:
            gone.add(invoice_id)
        else:
            raw_by_id[invoice_id] = got
    metered = _metered_prices(client) if raw_by_id else {}
    invoices: list[InvoiceSnapshot] = []
    lines: list[InvoiceLineSnapshot] = []
    for invoice_id, raw in raw_by_id.items():
        invoices.append(invoice_snapshot(raw))
        lines.extend(line_snapshot(invoice_id, ln, metered) for ln in _lines_of(client, raw))
    return InvoiceChanges(invoices, lines, gone, len(missing))


@dataclass
class SubscriptionChanges:
    """Every customer, the subscriptions read again, and ids Stripe no longer has."""

    customers: list[CustomerSnapshot]
    subscriptions: list[SubscriptionSnapshot]
    gone: set[str]
    read_by_id: int


def fetch_subscription_changes(
    client: stripe.StripeClient, plans: set[str], since: int, recheck: set[str]
) -> SubscriptionChanges:
    """Subscriptions not canceled, those created since `since`, and each of `recheck` not listed.

    Customers are listed in full: one per tenant, their count is today's, not history's, and a
    card added or removed changes no subscription (`has_payment_method` reads both).
    """
    customers = list(fetch_customers(client))
    has_pm = {c.customer_id: c.has_default_payment_method for c in customers}
    expand = {"expand": ["data.latest_invoice"]}
    raw_by_id: dict[str, dict[str, Any]] = {}
    for raw in pages(client, "/v1/subscriptions", expand):
        raw_by_id[str(raw["id"])] = raw
    created = {"status": "all", "created": {"gte": since}, **expand}
    for raw in pages(client, "/v1/subscriptions", created):
        raw_by_id[str(raw["id"])] = raw
    gone: set[str] = set()
    missing = sorted(recheck - set(raw_by_id))
    for sub_id in missing:
        got = retrieve_or_none(
            client, f"/v1/subscriptions/{sub_id}", {"expand": ["latest_invoice"]}
        )
        if got is None:
            gone.add(sub_id)
        else:
            raw_by_id[sub_id] = got
    subscriptions = [
        subscription_snapshot(raw, has_pm.get(str(object_id(raw.get("customer"))), False), plans)
        for raw in raw_by_id.values()
    ]
    return SubscriptionChanges(customers, subscriptions, gone, len(missing))


def subscription_needs_recheck(status: str, latest_invoice_status: str | None) -> bool:
    """Whether a stored subscription can still change: not ended, or its last bill not final."""
    if status not in ENDED_STATUSES:
        return True
    return latest_invoice_status in MOVABLE_INVOICE_STATUSES


def _sdk() -> Any:
    """The Stripe SDK, imported when a pass first needs its error types."""
    import stripe

    return stripe
