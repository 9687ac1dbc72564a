"""Lifecycle work falls due at its instant, whatever order the account made the objects in.

The sandbox finds due work through an index of each object's next due instant; these tests put
renewals, trial ends, payment retries, cancellations at period end and incomplete expiries of
several customers on one test clock, made in a shuffled order at staggered instants, and check
every resulting event's instant against calendar arithmetic done here (a month later on the same
day and time, or the month's last day: docs.stripe.com/billing/subscriptions/billing-cycle).
"""

from __future__ import annotations

import calendar
import random
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines_tests.support import advance

DAY = 86400
HOUR = 3600


def _months_later(ts: int, months: int) -> int:
    """The same day and time `months` later, or that month's last day when it is shorter."""
    d = datetime.fromtimestamp(ts, UTC)
    year, month = divmod(d.month - 1 + months, 12)
    year, month = d.year + year, month + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return int(d.replace(year=year, month=month, day=day).timestamp())


def _events(handle: SandboxHandle, type_: str, oid: str) -> list[dict[str, Any]]:
    with handle.state.lock:
        return [
            e
            for e in handle.state.data.events
            if e["type"] == type_ and e["data"]["object"]["id"] == oid
        ]


def _customer(c: stripe.StripeClient, clock: str, card: str) -> str:
    cus = c.v1.customers.create({"email": "ops@tenant.io", "test_clock": clock})
    pm = c.v1.payment_methods.attach(card, {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
    return cus.id


@pytest.mark.parametrize(
    ("start", "seed"),
    [
        (int(datetime(2026, 1, 31, 0, 0, tzinfo=UTC).timestamp()), 1),
        (int(datetime(2026, 3, 15, 12, 34, 56, tzinfo=UTC).timestamp()), 2),
        (int(datetime(2027, 10, 30, 23, 59, 59, tzinfo=UTC).timestamp()), 3),
    ],
)
def test_due_work_happens_at_its_instant_for_objects_made_in_any_order(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient, start: int, seed: int
):
    c = stripe_client
    rng = random.Random(seed)
    prod = c.v1.products.create({"name": "Pro"})
    price = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 4900,
            "recurring": {"interval": "month"},
        }
    ).id
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": start}).id
    kinds = [
        "renew",
        "renew",
        "trial",
        "trial",
        "trial_shortened",
        "cancel_at_end",
        "cancel_at",
        "retry",
        "expire",
    ]
    rng.shuffle(kinds)
    made: list[tuple[str, str, int]] = []  # (kind, subscription, created)
    instants: dict[str, int] = {}  # trial end or scheduled cancellation, by subscription
    now = start
    for kind in kinds:
        # Each made a few hours after the one before, so the order made is not the order due.
        now += rng.randrange(1, 30) * HOUR
        advance(c, clock, now)
        card = "pm_card_chargeCustomerFail" if kind == "expire" else "pm_card_visa"
        cus = _customer(c, clock, card)
        trial_end = 0
        if kind == "trial":
            trial_end = now + rng.randrange(4 * DAY, 20 * DAY)
        if kind == "trial_shortened":
            trial_end = now + 30 * DAY
        params: stripe.params.SubscriptionCreateParams = {
            "customer": cus,
            "items": [{"price": price}],
        }
        if trial_end:
            params["trial_end"] = trial_end
        sub = c.v1.subscriptions.create(params)
        instants[sub.id] = trial_end
        if kind == "cancel_at_end":
            c.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
        if kind == "retry":
            # Renewals will be charged to a card that fails from now on.
            pm = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": cus})
            c.v1.customers.update(cus, {"invoice_settings": {"default_payment_method": pm.id}})
        made.append((kind, sub.id, now))

    # Once the clock has run past them, two subscriptions get earlier work by an update.
    now += HOUR
    advance(c, clock, now)
    for kind, sub_id, _ in made:
        if kind == "trial_shortened":
            instants[sub_id] = now + rng.randrange(4 * DAY, 15 * DAY)
            c.v1.subscriptions.update(sub_id, {"trial_end": instants[sub_id]})
        if kind == "cancel_at":
            # Mid-period, before the renewal the subscription was due for.
            instants[sub_id] = now + rng.randrange(1 * DAY, 15 * DAY)
            c.v1.subscriptions.update(sub_id, {"cancel_at": instants[sub_id]})

    # Seventy days in uneven steps: where the steps fall must not move any instant.
    horizon = start + 70 * DAY
    while now < horizon:
        now = min(horizon, now + rng.randrange(2 * HOUR, 12 * DAY))
        advance(c, clock, now)

    h = stripe_sandbox
    with h.state.lock:
        # Work runs in time order: the events about subscriptions and invoices (all on this
        # clock) were recorded oldest first.
        recorded = [
            e["created"]
            for e in h.state.data.events
            if e["type"].startswith(("customer.subscription.", "invoice."))
        ]
    assert len(recorded) > 3 * len(made)
    assert recorded == sorted(recorded)
    for kind, sub_id, created in made:
        instant = instants[sub_id]
        sub = c.v1.subscriptions.retrieve(sub_id)
        with h.state.lock:
            renewals = sorted(
                (int(inv["created"]), inv["id"])
                for inv in h.state.table("invoice").values()
                if inv.get("_subscription") == sub_id
                and inv["billing_reason"] == "subscription_cycle"
            )
        cycles = [t for t, _ in renewals]
        if kind == "renew":
            assert cycles == [_months_later(created, 1), _months_later(created, 2)]
            assert sub.status == "active"
        elif kind in ("trial", "trial_shortened"):
            trial_end = instant
            warned = [
                e["created"] for e in _events(h, "customer.subscription.trial_will_end", sub_id)
            ]
            assert warned == [trial_end - 3 * DAY]
            activated = [
                e["created"]
                for e in _events(h, "customer.subscription.updated", sub_id)
                if e["data"].get("previous_attributes", {}).get("status") == "trialing"
            ]
            assert activated == [trial_end]
            assert cycles == [
                _months_later(trial_end, n)
                for n in (0, 1, 2)
                if _months_later(trial_end, n) <= horizon
            ]
        elif kind == "cancel_at_end":
            ended = [e["created"] for e in _events(h, "customer.subscription.deleted", sub_id)]
            assert ended == [_months_later(created, 1)]
            assert cycles == []
            assert sub.status == "canceled"
        elif kind == "cancel_at":
            ended = [e["created"] for e in _events(h, "customer.subscription.deleted", sub_id)]
            assert ended == [instant]
            assert cycles == []
        elif kind == "retry":
            renewal = _months_later(created, 1)
            assert cycles == [renewal, _months_later(created, 2)]
            attempts = [e["created"] for e in _events(h, "invoice.payment_failed", renewals[0][1])]
            # Finalized an hour after the period ends and charged then; retried 3, 5 and 7 days
            # after that first failure (the account's retry schedule).
            first = renewal + HOUR
            assert attempts == [first, first + 3 * DAY, first + 5 * DAY, first + 7 * DAY]
        elif kind == "expire":
            expired = [
                e["created"]
                for e in _events(h, "customer.subscription.updated", sub_id)
                if e["data"]["object"]["status"] == "incomplete_expired"
            ]
            assert expired == [created + 23 * HOUR]
            assert sub.status == "incomplete_expired"
