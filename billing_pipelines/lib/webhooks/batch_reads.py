"""Stripe objects read once per webhook run, however many of the run's events concern them.

Handlers decide on Stripe's current state, read after the event. Every event a run handles
was stored before the run began (the sensor names the rows when it asks for the run), so a
read made during the run is newer than each of them: reusing it for a later event of the same
run keeps that guarantee. The memo lives for one run only; the next run reads again, so an
object that changed meanwhile is seen by the run that handles the change's event. Handlers
only read Stripe, so nothing a handler does can make a remembered read stale.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from billing_pipelines.lib.stripe import reads as stripe_state

if TYPE_CHECKING:
    from billing_pipelines.lib.stripe.client import StripeClient


@dataclass
class BatchReads:
    """The subscriptions and invoices this run has read, by id (failed reads are not kept)."""

    subscriptions: dict[tuple[str, frozenset[str]], stripe_state.SubscriptionView] = field(
        default_factory=dict
    )
    invoices: dict[str, stripe_state.InvoiceView] = field(default_factory=dict)
    reused: int = 0

    def subscription(
        self, client: StripeClient, subscription_id: str, *, known_plans: Set[str]
    ) -> stripe_state.SubscriptionView:
        """The subscription as read by this run (read now if it was not yet)."""
        key = (subscription_id, frozenset(known_plans))
        if key in self.subscriptions:
            self.reused += 1
            return self.subscriptions[key]
        view = stripe_state.fetch_subscription(
            client, subscription_id, known_plans=set(known_plans)
        )
        self.subscriptions[key] = view
        return view

    def invoice(self, client: StripeClient, invoice_id: str) -> stripe_state.InvoiceView:
        """The invoice (without its lines resolved) as read by this run."""
        if invoice_id in self.invoices:
            self.reused += 1
            return self.invoices[invoice_id]
        view = stripe_state.fetch_invoice(client, invoice_id)
        self.invoices[invoice_id] = view
        return view
