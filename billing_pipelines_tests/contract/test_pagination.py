"""List pagination of the Stripe sandbox, against docs.stripe.com/api/pagination.

"Stripe's list API methods use cursor-based pagination through the starting_after and
ending_before parameters. Both parameters accept an existing object ID value and return objects
in reverse chronological order. [...] These parameters are mutually exclusive." `limit` ranges
from 1 to 100 (default 10); `starting_after` "is an object ID that defines your place in the
list". Lists with `created` (docs.stripe.com/api/customers/list, /api/subscriptions/list) return
only objects created in the given interval. Objects here are made on test clocks frozen at
chosen instants, so their `created` order differs from the order they were made in.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import stripe

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def _clock(client: stripe.StripeClient, at: int) -> str:
    return client.v1.test_helpers.test_clocks.create({"frozen_time": at}).id


def _customers_on_clocks(
    client: stripe.StripeClient, offsets: list[int], seed: int
) -> list[tuple[int, int, str]]:
    """Customers made in a shuffled order on clocks at T0 + offset: (created, made as n, id)."""
    clocks = {off: _clock(client, T0 + off) for off in sorted(set(offsets))}
    order = list(offsets)
    random.Random(seed).shuffle(order)
    made = []
    for n, off in enumerate(order):
        cus = client.v1.customers.create({"name": f"c{n}", "test_clock": clocks[off]})
        made.append((T0 + off, n, cus.id))
    return made


def _newest_first(made: list[tuple[int, int, str]]) -> list[str]:
    """Reverse chronological: newest `created` first, then the later-made of one second."""
    return [oid for _, _, oid in sorted(made, reverse=True)]


def _walk(client: stripe.StripeClient, limit: int, **extra: Any) -> tuple[list[str], list[bool]]:
    """Page through customers by hand with `starting_after`: ids in order, has_more per page."""
    ids: list[str] = []
    more: list[bool] = []
    params: dict[str, Any] = {"limit": limit, **extra}
    while True:
        page = client.v1.customers.list(params)  # type: ignore[arg-type]
        ids += [c.id for c in page.data]
        more.append(page.has_more)
        if not page.has_more:
            return ids, more
        params["starting_after"] = page.data[-1].id


def test_lists_are_newest_created_first_not_newest_made_first(
    stripe_client: stripe.StripeClient,
):
    # Three clocks, customers made on them in a shuffled order: the list follows `created`.
    made = _customers_on_clocks(stripe_client, [0, 500, 86_400] * 4 + [500], seed=7)
    listed = [c.id for c in stripe_client.v1.customers.list({"limit": 100}).data]
    assert listed == _newest_first(made)
    assert [c[0] for c in sorted(made, reverse=True)][:5] == [T0 + 86_400] * 4 + [T0 + 500]


@pytest.mark.parametrize("limit", [1, 4, 13, 100])
def test_starting_after_walks_every_object_once(stripe_client: stripe.StripeClient, limit: int):
    made = _customers_on_clocks(stripe_client, [i % 5 * 3600 for i in range(13)], seed=limit)
    ids, more = _walk(stripe_client, limit)
    assert ids == _newest_first(made)
    # has_more is true on every page but the last, and the last is never empty unless the
    # list is a multiple of the limit (then Stripe's has_more already said false one page
    # earlier: pages are ceil(13 / limit)).
    assert more == [True] * (-(-13 // limit) - 1) + [False]


def test_ending_before_returns_the_newer_neighbours_newest_first(
    stripe_client: stripe.StripeClient,
):
    made = _customers_on_clocks(stripe_client, [i * 60 for i in range(9)], seed=3)
    order = _newest_first(made)
    # The 3 objects just before order[6] in the list (newer ones), still newest first; more
    # newer ones exist.
    back = stripe_client.v1.customers.list({"limit": 3, "ending_before": order[6]})
    assert [c.id for c in back.data] == order[3:6]
    assert back.has_more
    # Near the head of the list: fewer than the limit, and nothing newer.
    head = stripe_client.v1.customers.list({"limit": 5, "ending_before": order[2]})
    assert [c.id for c in head.data] == order[0:2]
    assert not head.has_more


@pytest.mark.parametrize(
    ("created", "lo", "hi"),
    [
        ({"gte": T0 + 3600}, 3600, None),
        ({"gt": T0 + 3600}, 3601, None),
        ({"lt": T0 + 7200}, None, 7199),
        ({"lte": T0 + 7200}, None, 7200),
        ({"gte": T0 + 3600, "lt": T0 + 10_800}, 3600, 10_799),
        (T0 + 7200, 7200, 7200),
    ],
)
def test_created_filters_bound_the_list_and_its_pages(
    stripe_client: stripe.StripeClient, created: Any, lo: int | None, hi: int | None
):
    made = _customers_on_clocks(stripe_client, [i % 4 * 3600 for i in range(11)], seed=11)
    inside = [
        m for m in made if (lo is None or m[0] >= T0 + lo) and (hi is None or m[0] <= T0 + hi)
    ]
    assert inside and len(inside) < len(made)
    ids, _ = _walk(stripe_client, 2, created=created)
    assert ids == _newest_first(inside)


def test_created_filter_with_a_cursor_outside_the_interval(stripe_client: stripe.StripeClient):
    made = _customers_on_clocks(stripe_client, [0, 0, 3600, 3600, 7200, 7200], seed=5)
    order = _newest_first(made)
    # starting_after the newest object (created 7200, outside lt 7200): every match after it.
    page = stripe_client.v1.customers.list(
        {"limit": 10, "starting_after": order[0], "created": {"lt": T0 + 7200}}
    )
    assert [c.id for c in page.data] == order[2:]
    # ending_before the oldest object (created 0, outside gte 3600): the newest-first tail.
    back = stripe_client.v1.customers.list(
        {"limit": 3, "ending_before": order[-1], "created": {"gte": T0 + 3600}}
    )
    assert [c.id for c in back.data] == order[1:4]
    assert back.has_more


def test_a_cursor_defines_a_place_even_after_it_stops_matching(
    stripe_client: stripe.StripeClient,
):
    # The default subscription list leaves out cancelled ones; a subscription cancelled
    # between two pages is still a place in the list, so the listing goes on after it.
    clock = _clock(stripe_client, T0)
    price = stripe_client.v1.prices.create(
        {
            "currency": "usd",
            "unit_amount": 100,
            "recurring": {"interval": "month"},
            "product_data": {"name": "p"},
        }
    )
    subs = []
    for i in range(5):
        cus = stripe_client.v1.customers.create({"name": f"s{i}", "test_clock": clock})
        subs.append(
            stripe_client.v1.subscriptions.create(
                {"customer": cus.id, "items": [{"price": price.id}], "trial_period_days": 7}
            ).id
        )
    first = stripe_client.v1.subscriptions.list({"limit": 2})
    assert [s.id for s in first.data] == subs[::-1][:2]
    stripe_client.v1.subscriptions.cancel(first.data[-1].id)
    rest = stripe_client.v1.subscriptions.list({"limit": 10, "starting_after": first.data[-1].id})
    assert [s.id for s in rest.data] == subs[::-1][2:]
    assert not rest.has_more


def test_bad_paging_parameters_are_refused(stripe_client: stripe.StripeClient):
    stripe_client.v1.customers.create({"name": "only"})
    for limit in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as bad:
            stripe_client.v1.customers.list({"limit": limit})
        assert bad.value.http_status == 400 and bad.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe_client.v1.customers.list({"starting_after": "cus_missing"})
    assert missing.value.http_status == 404 and missing.value.param == "starting_after"
    # An id of another kind is no place in this list.
    product = stripe_client.v1.products.create({"name": "x"})
    with pytest.raises(stripe.InvalidRequestError) as other:
        stripe_client.v1.customers.list({"ending_before": product.id})
    assert other.value.http_status == 404 and other.value.param == "ending_before"
    # "These parameters are mutually exclusive."
    cus = stripe_client.v1.customers.list({"limit": 1}).data[0].id
    with pytest.raises(stripe.InvalidRequestError) as both:
        stripe_client.v1.customers.list({"starting_after": cus, "ending_before": cus})
    assert both.value.http_status == 400


def test_auto_paging_over_a_long_list_sees_each_object_once(stripe_client: stripe.StripeClient):
    # More objects than Stripe's largest page, made on clocks in a shuffled order.
    made = _customers_on_clocks(stripe_client, [i % 7 * 600 for i in range(130)], seed=130)
    page = stripe_client.v1.customers.list({"limit": 100})
    seen = [c.id for c in page.auto_paging_iter()]
    assert seen == _newest_first(made)
    assert len(set(seen)) == 130


def test_events_page_newest_created_first_with_type_and_created_filters(
    stripe_client: stripe.StripeClient,
):
    # docs.stripe.com/api/events/list: `type`, `types` and `created` filters, the same paging.
    made = _customers_on_clocks(stripe_client, [i % 3 * 7200 for i in range(8)], seed=8)
    ids_by_customer = {
        e.data.object["id"]: e.id
        for e in stripe_client.v1.events.list({"type": "customer.created", "limit": 100}).data
    }
    expected = [ids_by_customer[c] for c in _newest_first(made)]
    walked: list[str] = []
    params: dict[str, Any] = {"type": "customer.created", "limit": 3}
    while True:
        page = stripe_client.v1.events.list(params)  # type: ignore[arg-type]
        walked += [e.id for e in page.data]
        if not page.has_more:
            break
        params["starting_after"] = page.data[-1].id
    assert walked == expected
    later = stripe_client.v1.events.list(
        {"types": ["customer.*"], "created": {"gte": T0 + 7200}, "limit": 100}
    )
    inside = [m for m in made if m[0] >= T0 + 7200]
    assert [e.id for e in later.data] == [ids_by_customer[c] for c in _newest_first(inside)]
