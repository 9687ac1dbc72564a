"""The Stripe side of automatic tax: a customer's billing address and tax ids, and Stripe's refusal.

Stripe Tax locates a customer from its address (docs.stripe.com/tax/customer-locations);
`tax[validate_location]=immediately` makes Stripe refuse a location it cannot use when the
customer is written, with the error code `customer_tax_location_invalid`, instead of failing
the first invoice later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the definitions import this module; the SDK loads when a call is made
    import stripe


def invalid_request_error() -> type[stripe.InvalidRequestError]:
    """The SDK's 400 error class, imported when a call fails rather than at load time."""
    import stripe

    return stripe.InvalidRequestError


class TaxLocationRefused(Exception):
    """Stripe Tax could not locate the customer (customer_tax_location_invalid): nothing changed."""


# Stripe's error code for a location Stripe Tax cannot use (docs.stripe.com/error-codes).
TAX_LOCATION_INVALID = "customer_tax_location_invalid"


@dataclass(frozen=True)
class CustomerTax:
    """What Stripe Tax reads about a customer: the billing address and the tax ids."""

    address: dict[str, str]
    tax_id_data: tuple[dict[str, str], ...] = ()
    # Ask Stripe to refuse a location it cannot use now, instead of at the first invoice
    # (docs.stripe.com/tax/customer-locations: tax[validate_location]=immediately).
    validate: bool = True

    def params(self) -> dict[str, Any]:
        """The customer create/update params that carry this location."""
        out: dict[str, Any] = {"address": dict(self.address)}
        if self.validate:
            out["tax"] = {"validate_location": "immediately"}
        return out


def refused_location(exc: stripe.InvalidRequestError) -> TaxLocationRefused | None:
    if exc.code == TAX_LOCATION_INVALID:
        return TaxLocationRefused(exc.user_message or str(exc))
    return None


def update_customer_tax(
    client: stripe.StripeClient, customer_id: str, tax: CustomerTax
) -> list[str]:
    """Move the customer to a new billing address (validated by Stripe), add new tax ids.

    Returns the tax ids added. A location Stripe Tax cannot use raises `TaxLocationRefused`
    and leaves the customer as it was. Tax ids the customer already has are not added again.
    """
    try:
        client.v1.customers.update(customer_id, tax.params())  # type: ignore[arg-type]
    except invalid_request_error() as exc:
        refused = refused_location(exc)
        if refused is None:
            raise
        raise refused from None
    have = {
        (str(t.type), str(t.value))
        for t in client.v1.customers.tax_ids.list(customer_id, {"limit": 100}).data
    }
    added = []
    for data in tax.tax_id_data:
        if (data["type"], data["value"]) in have:
            continue
        made = client.v1.customers.tax_ids.create(
            customer_id,
            {"type": data["type"], "value": data["value"]},
            {"idempotency_key": f"tax_id:{customer_id}:{data['type']}:{data['value']}"},
        )
        added.append(str(made.id))
    return added


def customer_location(client: stripe.StripeClient, customer_id: str) -> dict[str, Any]:
    """The customer's billing address and tax ids as Stripe holds them now (for the audit log)."""
    customer = client.v1.customers.retrieve(customer_id).to_dict()
    ids = client.v1.customers.tax_ids.list(customer_id, {"limit": 100}).data
    return {
        "address": customer.get("address"),
        "tax_ids": sorted(f"{t.type}:{t.value}" for t in ids),
    }
