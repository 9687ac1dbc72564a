"""Correction lines on a customer's next invoice: pending invoice items (one-off amounts).

docs.stripe.com/api/invoiceitems/create: an item created without an invoice goes on the next
invoice created for the customer (its subscription's renewal included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from billing_pipelines.lib.stripe.client import retry_reads

if TYPE_CHECKING:
    import stripe

METADATA_KEY = "billing_correction"  # our key for the correction, on the item's metadata


@retry_reads
def find_item(client: stripe.StripeClient, customer_id: str, key: str) -> str | None:
    """The id of the customer's invoice item carrying this correction key, if one exists."""
    params: stripe.params.InvoiceItemListParams = {"customer": customer_id, "limit": 100}
    for item in client.v1.invoice_items.list(params).auto_paging_iter():
        metadata = item.metadata.to_dict() if item.metadata else {}
        if metadata.get(METADATA_KEY) == key:
            return str(item.id)
    return None


def create_item(
    client: stripe.StripeClient,
    *,
    customer_id: str,
    amount: int,
    currency: str,
    description: str,
    period: tuple[int, int],
    key: str,
    metadata: Mapping[str, str],
) -> str:
    """A pending invoice item on the customer (its next invoice bills it), created once."""
    item = client.v1.invoice_items.create(
        {
            "customer": customer_id,
            "amount": amount,
            "currency": currency,
            "description": description,
            "period": {"start": period[0], "end": period[1]},
            "metadata": {**metadata, METADATA_KEY: key},
        },
        # The same key on every retry: Stripe replays instead of creating a second item.
        {"idempotency_key": key},
    )
    return str(item.id)
