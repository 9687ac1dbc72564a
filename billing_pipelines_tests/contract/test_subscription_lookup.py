"""Finding a tenant's subscription by customer and metadata: the list that onboarding relies on.

docs.stripe.com/api/subscriptions/list: "By default, returns a list of subscriptions that have
not been canceled. In order to list canceled subscriptions, specify status=canceled"; `status`
also takes `all` (every status), and `customer` limits the list to one customer. A subscription
returned by a list carries its `metadata`. Onboarding lists (strongly consistent) instead of
searching (docs.stripe.com/search: not for read-after-write flows).
"""

from __future__ import annotations

import stripe

from billing_pipelines.lib.stripe import lifecycle as stripe_lifecycle


def _price(c: stripe.StripeClient) -> str:
    product = c.v1.products.create({"name": "Lookup"})
    price = c.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount": 1000,
            "recurring": {"interval": "month"},
        }
    )
    return str(price.id)


def test_list_by_customer_and_status_and_the_lookup_built_on_it(
    stripe_client: stripe.StripeClient,
) -> None:
    c = stripe_client
    price = _price(c)
    mine = c.v1.customers.create({"metadata": {"tenant_id": "lookup-a"}})
    other = c.v1.customers.create({"metadata": {"tenant_id": "lookup-b"}})
    card = {"invoice_settings": {"default_payment_method": ""}}
    for customer in (mine, other):
        pm = c.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
        card["invoice_settings"]["default_payment_method"] = pm.id
        c.v1.customers.update(customer.id, card)  # type: ignore[arg-type]

    def subscribe(customer: str, tenant: str) -> str:
        sub = c.v1.subscriptions.create(
            {"customer": customer, "items": [{"price": price}], "metadata": {"tenant_id": tenant}}
        )
        return str(sub.id)

    old = subscribe(mine.id, "lookup-a")
    c.v1.subscriptions.cancel(old)
    assert (
        stripe_lifecycle.find_live_subscription(c, customer_id=mine.id, tenant_id="lookup-a")
        is None
    )  # a canceled subscription is not the tenant's live one
    live = subscribe(mine.id, "lookup-a")
    stranger = subscribe(mine.id, "someone-else")  # same customer, another tenant's metadata
    theirs = subscribe(other.id, "lookup-b")

    default = {s.id for s in c.v1.subscriptions.list({"customer": mine.id}).data}
    every = c.v1.subscriptions.list({"customer": mine.id, "status": "all"}).data
    canceled = {s.id for s in c.v1.subscriptions.list({"customer": mine.id, "status": "canceled"})}
    assert default == {live, stranger}  # not canceled, this customer only
    assert {s.id for s in every} == {old, live, stranger}
    assert canceled == {old}
    assert {s.id: s.metadata["tenant_id"] for s in every} == {
        old: "lookup-a",
        live: "lookup-a",
        stranger: "someone-else",
    }
    assert (
        stripe_lifecycle.find_live_subscription(c, customer_id=mine.id, tenant_id="lookup-a")
        == live
    )
    assert (
        stripe_lifecycle.find_live_subscription(c, customer_id=other.id, tenant_id="lookup-b")
        == theirs
    )
    assert (
        stripe_lifecycle.find_live_subscription(c, customer_id=other.id, tenant_id="lookup-a")
        is None
    )
