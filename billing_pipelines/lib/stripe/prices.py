"""Which plan a Stripe price belongs to (the catalog stamps `metadata.plan` on every price)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from billing_pipelines.lib.stripe.client import retry_reads

if TYPE_CHECKING:
    import stripe


@retry_reads
def _price_plan(client: stripe.StripeClient, price_id: str) -> str | None:
    price = client.v1.prices.retrieve(price_id)
    plan = price.to_dict().get("metadata", {}).get("plan")
    return str(plan) if plan else None


def plans_of_prices(client: stripe.StripeClient, price_ids: Iterable[str]) -> dict[str, str]:
    """Price id -> plan key for the prices the catalog made; others are left out."""
    out = {}
    for price_id in sorted(set(price_ids)):
        plan = _price_plan(client, price_id)
        if plan:
            out[price_id] = plan
    return out
