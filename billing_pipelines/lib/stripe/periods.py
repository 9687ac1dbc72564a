"""Where each subscription's billing periods begin and end, as the meter push needs them."""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.metering.boundaries import SubscriptionTimes
from billing_pipelines.lib.stripe.client import retry_reads
from billing_pipelines.lib.stripe.objects import object_id, timestamp
from billing_pipelines.lib.stripe.snapshots import pages
from billing_pipelines.lib.usage.warehouse import day_bounds

if TYPE_CHECKING:
    import stripe


def usage_items(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The items whose periods bound billed usage: the metered ones (all items if none is).

    Periods live on the items since API 2025-03-31.basil, and in a mixed interval
    subscription they differ (docs.stripe.com/billing/subscriptions/mixed-interval): an annual
    tenant's yearly base item starts and ends where no usage period does (after a cycle
    switch), so only the metered items' periods split usage.
    """
    items = (raw.get("items") or {}).get("data") or []
    metered = [
        item
        for item in items
        if ((item.get("price") or {}).get("recurring") or {}).get("usage_type") == "metered"
    ]
    return metered or list(items)


def times_of(raw: dict[str, Any]) -> SubscriptionTimes:
    """A subscription's start, end and every usage period boundary Stripe reports on it and
    its metered items (see usage_items)."""
    instants = [
        timestamp(raw.get("trial_start")),
        timestamp(raw.get("trial_end")),
        timestamp(raw.get("billing_cycle_anchor")),
    ]
    for item in usage_items(raw):
        instants += [
            timestamp(item.get("current_period_start")),
            timestamp(item.get("current_period_end")),
        ]
    start = timestamp(raw.get("start_date")) or timestamp(raw.get("created"))
    return SubscriptionTimes(
        start=start,
        end=timestamp(raw.get("ended_at")),
        boundaries=tuple(sorted({t for t in instants if t is not None})),
    )


def subscription_times(
    client: stripe.StripeClient, subscription_ids: Collection[str], day: date
) -> dict[str, SubscriptionTimes]:
    """The times of these subscriptions whose current period started during the UTC day (a
    sign-up, renewal, trial end or resume inside it): only they can have a boundary inside
    it. One filtered listing, not a read per tenant, so a day without boundaries costs one
    request."""
    wanted = set(subscription_ids)
    out: dict[str, SubscriptionTimes] = {}
    if not wanted:
        return out
    start, end = day_bounds(day)
    params: dict[str, Any] = {
        "status": "all",
        "current_period_start": {"gte": int(start.timestamp()), "lt": int(end.timestamp())},
    }
    for raw in pages(client, "/v1/subscriptions", params):
        if raw["id"] in wanted:
            out[raw["id"]] = times_of(raw)
    return out


@retry_reads
def period_invoice_final(client: stripe.StripeClient, subscription_id: str, end: datetime) -> bool:
    """True once the invoice for the subscription's period ending at `end` left draft: usage
    reported for that period from now on is not on it (a later correction bills it)."""
    listed = client.v1.invoices.list({"subscription": subscription_id, "limit": 10})
    stamp = int(end.timestamp())
    return any(inv.period_end == stamp and inv.status not in (None, "draft") for inv in listed.data)


def final_period_ends(client: stripe.StripeClient, day: date) -> set[tuple[str, int]]:
    """(subscription id, period end) of every subscription invoice created since the UTC day
    began that has left draft: what `period_invoice_final` answers for one subscription, for
    every subscription whose period ends that day, in one paged listing (100 a page) instead
    of one listing per subscription.

    "Stripe generates an invoice for every subscription billing period"
    (docs.stripe.com/subscriptions/invoices) when the period renews, so the invoice of a period
    ending during the day was created at that end or later, never before the day began; later
    days' invoices only add rows no one asks about.
    """
    start, _ = day_bounds(day)
    out: set[tuple[str, int]] = set()
    for raw in pages(client, "/v1/invoices", {"created": {"gte": int(start.timestamp())}}):
        details = (raw.get("parent") or {}).get("subscription_details") or {}
        subscription = object_id(details.get("subscription"))
        period_end = raw.get("period_end")
        if subscription and period_end is not None and raw.get("status") not in (None, "draft"):
            out.add((subscription, int(period_end)))
    return out


@retry_reads
def current_period_start(client: stripe.StripeClient, subscription_id: str) -> datetime | None:
    """When the subscription's current usage period started (the latest of its metered
    items' starts; an annual tenant's yearly base item may have started later, at a switch)."""
    raw = client.v1.subscriptions.retrieve(subscription_id).to_dict()
    starts = [timestamp(item.get("current_period_start")) for item in usage_items(raw)]
    known = [s for s in starts if s is not None]
    return max(known) if known else None


def closing_subscriptions(client: stripe.StripeClient, first: date, last: date) -> set[str]:
    """Subscriptions with a period boundary from `first` to `last` (UTC days): those whose
    current period ends then and those that already renewed then (their previous period
    closed), not those that only began then (no period of theirs has closed). Two filtered
    listings, each paged by the few it returns."""
    start, _ = day_bounds(first)
    _, end = day_bounds(last)
    bounds = {"gte": int(start.timestamp()), "lt": int(end.timestamp())}
    out: set[str] = set()
    # docs.stripe.com/api/subscriptions/list: `current_period_end` "Only return subscriptions
    # whose minimum item current_period_end falls within the given date interval", and
    # `current_period_start` likewise with the maximum item current_period_start.
    for raw in pages(client, "/v1/subscriptions", {"status": "all", "current_period_end": bounds}):
        out.add(raw["id"])
    for raw in pages(
        client, "/v1/subscriptions", {"status": "all", "current_period_start": bounds}
    ):
        if not in_first_period(raw):
            out.add(raw["id"])
    return out


def in_first_period(raw: dict[str, Any]) -> bool:
    """True while the subscription's current usage period is its first: it began when the
    subscription did, so no period of it has closed yet.

    `start_date` is "the original start date of the entire subscription, even if the plan
    configuration has changed over time" (docs.stripe.com/changelog/2019-10-17/replaces-
    subscription-start-field); a renewal, a trial's end or a cycle reset starts a period
    after it. A current period that began before `start_date` (a backdated one) or without
    either time is not taken as the first: the caller then reads the tenant, the safe way.
    """
    began = timestamp(raw.get("start_date"))
    starts = [timestamp(item.get("current_period_start")) for item in usage_items(raw)]
    known = [s for s in starts if s is not None]
    return began is not None and bool(known) and max(known) == began
