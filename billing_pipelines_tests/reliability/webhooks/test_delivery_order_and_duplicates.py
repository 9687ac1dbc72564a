"""Missed webhooks and out-of-order payment events, against the sandbox's real signed deliveries:
duplicated, parallel, late, reordered and missed webhooks converge to one correct effect."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from billing_pipelines.defs.webhooks.jobs import stripe_event_recovery_job
from billing_pipelines_tests.support import advance
from billing_pipelines_tests.webhook_harness import DAY, T0, Harness, query

FEB1 = T0 + 31 * DAY
FIRST_FAIL = FEB1 + 3600


def _fail_once(h: Harness, tenant_id: str) -> tuple[str, str]:
    """A tenant whose renewal charge fails once; returns (customer id, clock id)."""
    customer, _, clock = h.tenant(tenant_id)
    bad = h.client.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", {"customer": customer.id}
    )
    h.client.v1.customers.update(
        customer.id, {"invoice_settings": {"default_payment_method": bad.id}}
    )
    return customer.id, clock


def test_same_event_three_times_in_parallel_and_later_one_row_one_effect_one_email(
    harness: Harness,
) -> None:
    h = harness
    _, clock = _fail_once(h, "dup")
    advance(h.client, clock, FIRST_FAIL + 60)
    h.drain()
    [failed] = h.event_ids("invoice.payment_failed")
    body, signature = h.signed(failed)

    # Two more copies at the same moment, racing the original that is already stored.
    def post(_: int) -> int:
        response = httpx.post(
            h.receiver.webhook_url,
            content=body,
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        )
        return response.status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(post, range(4))) == [200] * 4
    h.pump()
    # ... and once more later, through the sandbox's own retry path, after processing.
    h.redeliver(failed)
    h.pump()

    rows = query(h.db_url, "SELECT status FROM webhook_events WHERE event_id = %s", (failed,))
    assert rows == [{"status": "processed"}]
    assert query(h.db_url, "SELECT step, action FROM dunning_actions") == [
        {"step": 1, "action": "reminder"}
    ]
    reminders = [m for m in h.emails("dup@tenant.example") if "Payment failed" in m["Subject"]]
    assert len(reminders) == 1
    assert query(h.db_url, "SELECT count(*) AS n FROM notification_outbox")[0]["n"] == 1
    metrics = httpx.get(h.receiver.metrics_url).text
    assert "billing_webhook_events_duplicate_total 5.0" in metrics


def test_payment_failed_processed_after_payment_succeeded_keeps_tenant_active(
    harness: Harness,
) -> None:
    h = harness
    customer_id, clock = _fail_once(h, "late")
    h.settle()
    # Stripe's deliveries stall (endpoint down): four failures, then the customer pays.
    h.deliveries_paused(True)
    for at in (FIRST_FAIL + 60, FIRST_FAIL + 3 * DAY + 60, FIRST_FAIL + 5 * DAY + 60):
        advance(h.client, clock, at)
    advance(h.client, clock, FIRST_FAIL + 7 * DAY + 60)
    invoice = h.client.v1.invoices.list({"customer": customer_id, "status": "open"}).data[0]
    assert invoice.attempt_count == 4
    good = h.client.v1.payment_methods.attach("pm_card_visa", {"customer": customer_id})
    assert h.client.v1.invoices.pay(invoice.id, {"payment_method": good.id}).status == "paid"
    h.deliveries_paused(False)

    # The success arrives first...
    h.redeliver(*h.event_ids("invoice.paid")[-1:], *h.event_ids("invoice.payment_succeeded")[-1:])
    h.pump()
    # ... then every stale failure and the stale "unpaid" subscription snapshot.
    stale = h.event_ids("invoice.payment_failed") + h.event_ids("customer.subscription.updated")
    assert len(h.event_ids("invoice.payment_failed")) == 4
    h.redeliver(*stale)
    h.pump()

    row = h.tenant_row("late")
    assert (
        row["billing_status"],
        row["api_access_enabled"],
        str(row["rate_limit_multiplier"]),
    ) == (
        "active",
        True,
        "1.00",
    )
    outcomes = query(
        h.db_url,
        "SELECT outcome FROM webhook_events WHERE event_type = 'invoice.payment_failed'",
    )
    assert len(outcomes) == 4
    assert all(o["outcome"].endswith("is paid") for o in outcomes), outcomes
    assert query(h.db_url, "SELECT * FROM dunning_actions") == []
    subjects = [m["Subject"] for m in h.emails()]
    assert not any("suspend" in s.lower() or "payment failed" in s.lower() for s in subjects)
    assert not any(a == "tenant.suspend" for a in _audit_actions(h))


def _audit_actions(h: Harness) -> list[str]:
    return [r["action"] for r in query(h.db_url, "SELECT action FROM audit_log ORDER BY id")]


def test_missed_webhooks_are_recovered_from_the_event_list(harness: Harness) -> None:
    """Cancelled in Stripe while our endpoint was unreachable: the daily recovery job finds it."""
    h = harness
    _, subscription, _ = h.tenant("missed", on_clock=False)
    h.settle()
    assert h.tenant_row("missed")["api_access_enabled"] is True
    h.deliveries_paused(True)  # Stripe gives up on us: nothing arrives
    h.client.v1.subscriptions.cancel(subscription.id)
    h.drain()
    assert h.tenant_row("missed")["billing_status"] == "active"  # we do not know yet

    resources = h.resources()
    first = stripe_event_recovery_job.execute_in_process(instance=h.instance, resources=resources)
    assert first.success
    assert first.output_for_node("recover_stripe_events")["recovered"] == 1
    h.pump()
    row = h.tenant_row("missed")
    assert (row["billing_status"], row["api_access_enabled"]) == ("canceled", False)
    assert query(
        h.db_url,
        "SELECT source, status FROM webhook_events "
        "WHERE event_type = 'customer.subscription.deleted'",
    ) == [{"source": "recovery", "status": "processed"}]
    assert "tenant.revoke_access" in _audit_actions(h)
    again = stripe_event_recovery_job.execute_in_process(instance=h.instance, resources=resources)
    counts = again.output_for_node("recover_stripe_events")
    assert counts["recovered"] == 0 and counts["listed"] >= 1
