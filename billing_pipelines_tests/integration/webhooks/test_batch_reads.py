"""A webhook run reads each Stripe object its events concern once; the next run reads it again."""

from __future__ import annotations

import json
from collections import Counter

from billing_pipelines_tests.webhook_harness import Harness, query


def _objects_by_event(db_url: str) -> tuple[Counter[str], Counter[str]]:
    """From the queued events themselves: how many concern each subscription and each invoice."""
    subscriptions: Counter[str] = Counter()
    invoices: Counter[str] = Counter()
    for row in query(
        db_url, "SELECT event_type, payload FROM webhook_events WHERE status = 'pending'"
    ):
        payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        obj = payload["data"]["object"]
        if row["event_type"].startswith("customer.subscription."):
            subscriptions[obj["id"]] += 1
        elif row["event_type"] in ("invoice.paid", "invoice.payment_succeeded"):
            invoices[obj["id"]] += 1
            parent = (obj.get("parent") or {}).get("subscription_details") or {}
            if parent.get("subscription"):
                subscriptions[parent["subscription"]] += 1
    return subscriptions, invoices


def test_one_webhook_run_reads_each_subscription_and_invoice_once_and_the_next_run_reads_again(
    harness: Harness,
) -> None:
    h = harness
    paths = h.sandbox.app.state.paths
    # One tenant paying by card from the start, one on a trial without a card, so each
    # subscription is named by several events (created, and its first invoice paid twice over).
    customer_a, sub_a, _ = h.tenant("batch_a")
    customer_b = h.client.v1.customers.create(
        {"email": "batch_b@tenant.example", "metadata": {"tenant_id": "batch_b"}}
    )
    query(
        h.db_url,
        "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id) "
        "VALUES ('batch_b', 'Tenant batch_b', 'batch_b@tenant.example', 'pro', %s)",
        (customer_b.id,),
    )
    [base] = h.client.v1.prices.list({"lookup_keys": ["pro_base"]}).data
    sub_b = h.client.v1.subscriptions.create(
        {"customer": customer_b.id, "items": [{"price": base.id}], "trial_period_days": 14}
    )
    h.drain()
    by_subscription, by_invoice = _objects_by_event(h.db_url)
    assert by_subscription[sub_a.id] >= 2 and by_subscription[sub_b.id] >= 2, by_subscription
    assert by_invoice and all(n >= 2 for n in by_invoice.values()), by_invoice
    before = Counter(paths)

    assert h.pump(only=("webhook_events_sensor",)) == 1  # one run for the whole burst

    read = Counter({p: n - before[p] for p, n in paths.items() if n > before[p]})
    assert read[f"/v1/subscriptions/{sub_a.id}"] == 1
    assert read[f"/v1/subscriptions/{sub_b.id}"] == 1
    # Neither subscription names a default payment method: the customer is read with it, once.
    assert read[f"/v1/customers/{customer_a.id}"] == 1
    assert read[f"/v1/customers/{customer_b.id}"] == 1
    for invoice_id in by_invoice:
        assert read[f"/v1/invoices/{invoice_id}"] == 1, invoice_id
    # The same decisions as reading each time: Stripe's own statuses.
    assert h.tenant_row("batch_a")["subscription_status"] == "active"
    assert h.tenant_row("batch_b")["subscription_status"] == "trialing"
    handled = query(
        h.db_url, "SELECT event_id FROM webhook_events WHERE status IN ('processed', 'ignored')"
    )
    assert len(handled) == sum(1 for _ in query(h.db_url, "SELECT id FROM webhook_events"))
    # One stored log message for the run's events (not one per event), naming each of them.
    [run] = h.instance.get_runs()
    naming = [
        e.user_message
        for e in h.instance.all_logs(run.run_id)
        if not e.is_dagster_event and any(r["event_id"] in e.user_message for r in handled)
    ]
    assert len(naming) == 1, naming
    assert all(r["event_id"] in naming[0] for r in handled)

    # A change after that run: its event's run reads the subscription again, never the memo.
    h.client.v1.subscriptions.cancel(sub_a.id)
    h.drain()
    before = Counter(paths)
    assert h.pump(only=("webhook_events_sensor",)) == 1
    assert paths[f"/v1/subscriptions/{sub_a.id}"] - before[f"/v1/subscriptions/{sub_a.id}"] == 1
    row = h.tenant_row("batch_a")
    assert row["subscription_status"] == "canceled"
    assert h.tenant_row("batch_b")["subscription_status"] == "trialing"
