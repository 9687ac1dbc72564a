"""Stripe does not retry a renewal without a payment method: the ladder does not wait for it.

Real parts end to end, as in the ladder test: signed deliveries -> receiver -> queue -> sensors
-> jobs -> tenant flags and emails.
"""

from __future__ import annotations

from billing_pipelines_tests.support import advance
from billing_pipelines_tests.webhook_harness import DAY, T0, Harness, query

FEB1 = T0 + 31 * DAY


def test_renewal_without_a_payment_method_goes_straight_to_suspension(harness: Harness) -> None:
    h = harness
    c = h.client
    customer, subscription, clock = h.tenant("nocard")
    h.settle()
    assert h.tenant_row("nocard")["api_access_enabled"]
    card = c.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method  # type: ignore[union-attr]
    c.v1.payment_methods.detach(str(card))
    advance(c, clock, FEB1 + 2 * 3600 + 17 * 60)  # the renewal is charged at FEB1 + 1 h
    h.settle()
    invoice = c.v1.invoices.list({"customer": customer.id, "status": "open"}).data[0]
    assert invoice.attempt_count == 1 and invoice.next_payment_attempt is None
    steps = query(
        h.db_url,
        "SELECT step, action FROM dunning_actions WHERE invoice_id = %s ORDER BY step",
        (invoice.id,),
    )
    assert [(r["step"], r["action"]) for r in steps] == [
        (1, "skipped"),
        (2, "skipped"),
        (3, "skipped"),
        (4, "suspend"),
    ]
    row = h.tenant_row("nocard")
    assert not row["api_access_enabled"] and row["billing_status"] == "suspended"
    subjects = [m["Subject"] for m in h.emails("nocard@tenant.example")]
    assert subjects == ["Your API access is suspended"]
    # Ten days on, Stripe has still not retried and nothing else was sent.
    advance(c, clock, FEB1 + 10 * DAY)
    h.settle()
    assert c.v1.invoices.retrieve(invoice.id).attempt_count == 1
    assert len(h.emails("nocard@tenant.example")) == 1
    assert c.v1.subscriptions.retrieve(subscription.id).status == "past_due"
