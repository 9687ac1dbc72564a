"""Stripe's two modes never mix: a live-mode event never changes a tenant run with a test-mode
key, nor the reverse. The mismatch is recorded on the queue row and raised as an alert."""

from __future__ import annotations

import json
import time
from typing import Any

import dagster as dg
import httpx

from billing_pipelines.definitions import defs
from billing_pipelines.defs.notifications.resources import EmailResource
from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.lib.webhooks.signature import expected_signature
from billing_pipelines_tests.support import advance
from billing_pipelines_tests.webhook_harness import DAY, T0, Harness, query

FIRST_FAIL = T0 + 31 * DAY + 3600


def _post(h: Harness, body: bytes) -> None:
    t = int(time.time())
    signature = f"t={t},v1={expected_signature(body, t, h.secret)}"
    response = httpx.post(
        h.receiver.webhook_url, content=body, headers={"Stripe-Signature": signature}
    )
    assert response.status_code == 200


def _other_mode_copy(body: bytes, event_id: str, livemode: bool) -> bytes:
    event: dict[str, Any] = json.loads(body)
    event["id"], event["livemode"] = event_id, livemode
    return json.dumps(event).encode()


def _failed_renewal(h: Harness, tenant_id: str) -> str:
    """A tenant whose renewal charge fails; returns the test-mode invoice.payment_failed id,
    which the receiver has not seen (deliveries are paused)."""
    customer, _, clock = h.tenant(tenant_id)
    bad = h.client.v1.payment_methods.attach(
        "pm_card_chargeCustomerFail", {"customer": customer.id}
    )
    h.client.v1.customers.update(
        customer.id, {"invoice_settings": {"default_payment_method": bad.id}}
    )
    h.settle()  # the tenant's own set-up events, handled as usual
    h.deliveries_paused(True)
    advance(h.client, clock, FIRST_FAIL + 60)
    [failed] = h.event_ids("invoice.payment_failed")
    return failed


def test_live_mode_event_never_changes_a_test_mode_tenant(harness: Harness) -> None:
    h = harness
    failed = _failed_renewal(h, "modes")
    body, _ = h.signed(failed)
    assert json.loads(body)["livemode"] is False
    before = h.tenant_row("modes")

    # The same failure, as a live-mode event, reaches the receiver of a test-mode deployment.
    _post(h, _other_mode_copy(body, "evt_live_copy_1", livemode=True))
    h.pump()

    row = query(
        h.db_url, "SELECT status, outcome FROM webhook_events WHERE event_id = 'evt_live_copy_1'"
    )
    assert row == [
        {
            "status": "ignored",
            "outcome": "live-mode event, but the Stripe key is test-mode: not applied",
        }
    ]
    assert query(h.db_url, "SELECT count(*) AS n FROM dunning_actions") == [{"n": 0}]
    after = h.tenant_row("modes")
    for column in ("billing_status", "api_access_enabled", "rate_limit_multiplier"):
        assert after[column] == before[column], column
    alerts = query(h.db_url, "SELECT kind, severity, summary, details FROM alerts")
    assert len(alerts) == 1
    assert (alerts[0]["kind"], alerts[0]["severity"]) == ("webhook_mode_mismatch", "warning")
    assert alerts[0]["summary"].startswith("Stripe sent live-mode events to the test-mode")
    assert alerts[0]["details"]["first_event"] == "evt_live_copy_1"

    # A second mismatched event is recorded on its row too, under the same (daily) alert.
    _post(h, _other_mode_copy(body, "evt_live_copy_2", livemode=True))
    h.pump()
    assert query(
        h.db_url, "SELECT status FROM webhook_events WHERE event_id = 'evt_live_copy_2'"
    ) == [{"status": "ignored"}]
    assert query(h.db_url, "SELECT count(*) AS n FROM alerts") == [{"n": 1}]

    # The genuine test-mode event still has its effect: the check, not chance, stopped the copy.
    _post(h, body)
    h.pump()
    assert query(h.db_url, "SELECT status FROM webhook_events WHERE event_id = %s", (failed,)) == [
        {"status": "processed"}
    ]
    assert query(h.db_url, "SELECT step, action FROM dunning_actions") == [
        {"step": 1, "action": "reminder"}
    ]


def test_test_mode_event_never_changes_a_live_mode_tenant(harness: Harness) -> None:
    h = harness
    failed = _failed_renewal(h, "livet")
    body, _ = h.signed(failed)
    before = h.tenant_row("livet")
    _post(h, body)  # a test-mode event, as Stripe's test endpoint would send it
    [row_id] = [
        r["id"]
        for r in query(h.db_url, "SELECT id FROM webhook_events WHERE event_id = %s", (failed,))
    ]
    # The job Dagster loads, run with a live-mode key. The refusal comes before any Stripe call,
    # so the sandbox (which accepts only test keys) is never asked anything with it.
    job = defs().resolve_job_def("webhook_events_job")
    result = job.execute_in_process(
        run_config=dg.RunConfig(ops={"process_webhook_events": {"config": {"row_ids": [row_id]}}}),
        instance=h.instance,
        resources={
            "billing_db": BillingDatabase(url=h.db_url),
            "stripe": StripeResource(
                api_key="sk_live_not_a_real_key", api_base=h.sandbox.url, max_network_retries=0
            ),
            "email": EmailResource(smtp_url=h.smtp.url, sender="Billing <billing@example.com>"),
        },
    )
    assert result.success
    assert result.output_for_node("process_webhook_events")["ignored"] == 1
    assert query(
        h.db_url, "SELECT status, outcome FROM webhook_events WHERE id = %s", (row_id,)
    ) == [
        {
            "status": "ignored",
            "outcome": "test-mode event, but the Stripe key is live-mode: not applied",
        }
    ]
    assert query(h.db_url, "SELECT count(*) AS n FROM dunning_actions") == [{"n": 0}]
    after = h.tenant_row("livet")
    for column in ("billing_status", "api_access_enabled", "rate_limit_multiplier"):
        assert after[column] == before[column], column
    assert [a["kind"] for a in query(h.db_url, "SELECT kind FROM alerts")] == [
        "webhook_mode_mismatch"
    ]
