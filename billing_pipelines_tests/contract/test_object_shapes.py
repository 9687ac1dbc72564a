"""Every object the sandbox returns carries the fields the SDK declares, with JSON types that
match the annotations (null only where the SDK says Optional)."""

from __future__ import annotations

import typing
from decimal import Decimal
from typing import Any

import httpx
import stripe
from billing_sandbox.stripe import SandboxHandle
from billing_sandbox.stripe.resources.customers import _TYPE_KEYS
from billing_sandbox.stripe.shapes import annotations_of
from stripe._list_object import ListObject
from stripe._stripe_object import StripeObject

from billing_pipelines_tests.support import API_KEY

# Fields Stripe only includes when expanded ("includable"), or that only exist on deleted objects.
NOT_BY_DEFAULT = {
    "price": {"tiers", "currency_options"},
    "customer": {
        "subscriptions",
        "sources",
        "tax_ids",
        "tax",
        "cash_balance",
        "invoice_credit_balance",
    },
    "invoice": {"deleted"},
    "subscription_item": {"deleted"},
    "invoiceitem": {"deleted"},
    "product": {"deleted"},
    "test_helpers.test_clock": {"deleted"},
    "webhook_endpoint": {"secret"},  # Stripe returns the secret only on creation
    # a payment method carries only the hash of its own type (`card` for cards)
    "payment_method": set(_TYPE_KEYS),
}


def _json_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return any(_json_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if isinstance(tp, typing.ForwardRef):
        return isinstance(value, str | dict)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, list):
        return isinstance(value, list)
    if origin in (dict, dict):
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is Decimal:
        return isinstance(value, str)
    if origin is not None and isinstance(origin, type) and issubclass(origin, ListObject):
        return isinstance(value, dict) and value.get("object") == "list"
    if isinstance(tp, type) and issubclass(tp, StripeObject):
        return isinstance(value, dict)
    if origin is not None and isinstance(origin, type) and issubclass(origin, StripeObject):
        return isinstance(value, dict)
    return True


def _check(obj: dict[str, Any], cls: type) -> list[str]:
    problems = []
    ann = annotations_of(cls)
    skip = NOT_BY_DEFAULT.get(obj.get("object", ""), set())
    for name, tp in ann.items():
        if name in skip:
            continue
        if name not in obj:
            problems.append(f"{cls.__name__}.{name} missing")
        elif not _json_ok(obj[name], tp):
            problems.append(f"{cls.__name__}.{name}={obj[name]!r} is not {tp}")
    return problems


def _get(h: SandboxHandle, path: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{h.url}{path}", params=params, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_returned_objects_match_sdk_annotations(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient
):
    c = stripe_client
    prod = c.v1.products.create({"name": "Pro"})
    meter = c.v1.billing.meters.create(
        {"display_name": "q", "event_name": "q", "default_aggregation": {"formula": "sum"}}
    )
    price = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount": 9900,
            "recurring": {"interval": "month"},
        }
    )
    usage = c.v1.prices.create(
        {
            "product": prod.id,
            "currency": "usd",
            "unit_amount_decimal": Decimal("0.08"),
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    clock = c.v1.test_helpers.test_clocks.create({"frozen_time": 1767225600})
    cus = c.v1.customers.create({"test_clock": clock.id})
    pm = c.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    c.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
    sub = c.v1.subscriptions.create(
        {"customer": cus.id, "items": [{"price": price.id}, {"price": usage.id}]}
    )
    ep = c.v1.webhook_endpoints.create({"url": "http://127.0.0.1:9/x", "enabled_events": ["*"]})
    inv_id = str(sub.latest_invoice)
    cases: list[tuple[str, type]] = [
        (f"/v1/products/{prod.id}", stripe.Product),
        (f"/v1/prices/{price.id}", stripe.Price),
        (f"/v1/billing/meters/{meter.id}", stripe.billing.Meter),
        (f"/v1/customers/{cus.id}", stripe.Customer),
        (f"/v1/payment_methods/{pm.id}", stripe.PaymentMethod),
        (f"/v1/subscriptions/{sub.id}", stripe.Subscription),
        (f"/v1/invoices/{inv_id}", stripe.Invoice),
        (f"/v1/test_helpers/test_clocks/{clock.id}", stripe.test_helpers.TestClock),
        (f"/v1/webhook_endpoints/{ep.id}", stripe.WebhookEndpoint),
    ]
    problems: list[str] = []
    for path, cls in cases:
        problems += _check(_get(stripe_sandbox, path), cls)
    s = _get(stripe_sandbox, f"/v1/subscriptions/{sub.id}")
    problems += _check(s["items"]["data"][0], stripe.SubscriptionItem)
    inv = _get(stripe_sandbox, f"/v1/invoices/{inv_id}")
    problems += _check(inv["lines"]["data"][0], stripe.InvoiceLineItem)
    ev = _get(stripe_sandbox, "/v1/events")["data"][0]
    problems += _check(ev, stripe.Event)
    summ = _get(
        stripe_sandbox,
        f"/v1/billing/meters/{meter.id}/event_summaries",
        customer=cus.id,
        start_time=1767225600,
        end_time=1767229200,
    )["data"][0]
    problems += _check(summ, stripe.billing.MeterEventSummary)
    assert problems == []
