"""The queue under failure: safe claims under concurrency, retries with backoff, dead letters
with an alert, unknown types ignored, finalization failures alerted, trials reflected."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from billing_sandbox.stripe.resources.events import emit
from psycopg.rows import dict_row

from billing_pipelines.defs.dunning.jobs import trial_reminders_job
from billing_pipelines.defs.resources import StripeResource
from billing_pipelines.defs.webhooks.jobs import webhook_events_job
from billing_pipelines.lib.pg.queue import Dispatched, RetryPolicy
from billing_pipelines.lib.stripe import reads as stripe_reads
from billing_pipelines.lib.webhooks import queue as webhook_queue
from billing_pipelines_tests.support import API_KEY, advance
from billing_pipelines_tests.webhook_harness import DAY, T0, Harness, free_port, query


def _store(url: str, event_id: str, event_type: str, obj: dict[str, object]) -> int:
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {"object": obj},
        }
    ).encode()
    with psycopg.connect(url, row_factory=dict_row) as conn:
        row_id = webhook_queue.insert_event(conn, webhook_queue.parse_event(body), "webhook")
    assert row_id is not None
    return row_id


def test_two_consumers_never_claim_the_same_row(billing_db_url: str) -> None:
    ids = [
        _store(billing_db_url, f"evt_c{i}", "customer.created", {"id": "cus_x"}) for i in range(6)
    ]
    queue = webhook_queue.events_queue(RetryPolicy())
    with (
        psycopg.connect(billing_db_url, row_factory=dict_row) as a,
        psycopg.connect(billing_db_url, row_factory=dict_row) as b,
    ):
        first = queue.claim(a, ids[:4], owner="run-a")  # still open tx
        second = queue.claim(b, ids, owner="run-b")
        b.commit()
        a.commit()
    assert [c.id for c in first] == ids[:4]
    assert [c.id for c in second] == ids[4:]  # SKIP LOCKED: nobody waits, nobody doubles
    # A claim older than the lease is taken over, and the old owner loses it.
    with psycopg.connect(billing_db_url, row_factory=dict_row) as conn:
        conn.execute(
            "UPDATE webhook_events SET claimed_at = now() - interval '1 hour' WHERE id = %s",
            (ids[0],),
        )
        taken = queue.claim(conn, [ids[0], ids[1]], owner="run-c")
        assert [(c.id, c.attempts) for c in taken] == [(ids[0], 2)]
        assert not queue.still_owned(conn, ids[0], "run-a")
        assert queue.still_owned(conn, ids[0], "run-c")


def test_handler_failures_retry_with_backoff_then_dead_letter_with_alert(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("ALERT_EMAIL", "oncall@example.com")
    customer, subscription, _ = h.tenant("flaky", on_clock=False)
    h.settle()
    row_id = _store(
        h.db_url,
        "evt_flaky",
        "customer.subscription.updated",
        {"id": subscription.id, "customer": customer.id},
    )
    unknown = _store(h.db_url, "evt_unknown", "radar.early_fraud_warning.created", {"id": "x"})
    # Stripe is unreachable for this run: the handler fails, the row is retried later. The
    # handler's read still tries Stripe 8 times in each run; only its waits between tries (about
    # 35 s a run, the back-off that carries a snapshot through an outage) are recorded instead
    # of slept, since the queue's retry and dead letter below are what this test is about.
    read_waits: list[float] = []
    # tenacity keeps the decorator's Retrying on the function; each call copies its sleep.
    retrying = vars(stripe_reads.fetch_subscription)["retry"]
    monkeypatch.setattr(retrying, "sleep", read_waits.append)
    broken = {
        **h.resources(),
        "stripe": StripeResource(
            api_key=API_KEY, api_base=f"http://127.0.0.1:{free_port()}", max_network_retries=0
        ),
    }
    config = {"ops": {"process_webhook_events": {"config": {"row_ids": [row_id, unknown]}}}}
    result = webhook_events_job.execute_in_process(
        run_config=config, instance=h.instance, resources=broken
    )
    assert result.success
    assert result.output_for_node("process_webhook_events")["failed"] == 1
    assert len(read_waits) == 7 and min(read_waits) > 0  # 8 tries, each after a back-off
    [row] = query(h.db_url, "SELECT * FROM webhook_events WHERE id = %s", (row_id,))
    assert row["status"] == "failed" and row["attempts"] == 1
    assert "APIConnectionError" in row["last_error"] and API_KEY not in row["last_error"]
    wait = (row["next_attempt_at"] - row["received_at"]).total_seconds()
    assert 25 < wait < 120  # first backoff: 30 s
    [ignored] = query(
        h.db_url, "SELECT status, outcome FROM webhook_events WHERE id = %s", (unknown,)
    )
    assert ignored == {
        "status": "ignored",
        "outcome": "no handler for radar.early_fraud_warning.created",
    }
    # Not due yet: the sensor leaves it alone.
    assert h.pump(only=("webhook_events_sensor",)) == 0
    query(h.db_url, "UPDATE webhook_events SET next_attempt_at = now() WHERE id = %s", (row_id,))
    result = webhook_events_job.execute_in_process(
        run_config=config, instance=h.instance, resources=broken, raise_on_error=False
    )
    assert not result.success  # a dead letter fails the run: visible in the UI
    assert len(read_waits) == 14
    [row] = query(h.db_url, "SELECT status, attempts FROM webhook_events WHERE id = %s", (row_id,))
    assert row == {"status": "dead", "attempts": 2}
    [alert] = query(h.db_url, "SELECT kind, severity, summary, details FROM alerts")
    assert alert["kind"] == "webhook_dead_letter" and alert["severity"] == "critical"
    assert "evt_flaky" in alert["summary"]
    h.pump()
    [mail] = h.emails("oncall@example.com")
    assert mail["Subject"].startswith("[billing alert] Stripe event evt_flaky")
    # Dead rows stay dead until an operator requeues them.
    assert h.pump() == 0


def test_invoice_finalization_failure_raises_one_alert(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    monkeypatch.setenv("ALERT_EMAIL", "oncall@example.com")
    customer, subscription, clock = h.tenant("stuck")
    advance(h.client, clock, T0 + 31 * DAY + 60)  # renewal draft exists, not finalized yet
    draft = h.client.v1.invoices.list({"customer": customer.id, "status": "draft"}).data[0]
    state = h.sandbox.state
    with state.lock:  # Stripe could not finalize it (e.g. a tax location error)
        invoice = state.table("invoice")[draft.id]
        invoice["auto_advance"] = False
        invoice["last_finalization_error"] = {
            "type": "invalid_request_error",
            "message": "The customer's tax location is invalid.",
        }
        for _ in range(2):  # delivered twice
            emit(state, "invoice.finalization_failed", invoice, created=T0 + 31 * DAY + 3600)
    h.settle()
    [alert] = query(h.db_url, "SELECT kind, details FROM alerts")
    assert alert["kind"] == "invoice_finalization_failed"
    assert alert["details"]["tenant"] == "stuck"
    assert alert["details"]["error"] == "The customer's tax location is invalid."
    assert len(h.emails("oncall@example.com")) == 1


@pytest.mark.parametrize(
    ("behavior", "status", "access"),
    [
        ("cancel", "canceled", False),
        ("pause", "paused", False),
        # The trial's invoice fails for want of a card and Stripe never retries without a
        # payment method, so the ladder does not wait for attempts that will not come: suspended.
        ("create_invoice", "suspended", False),
    ],
)
def test_trial_without_payment_method_one_reminder_then_end_behavior_in_access(
    harness: Harness, behavior: str, status: str, access: bool
) -> None:
    h = harness
    _, subscription, clock = h.tenant("trial", card=None, trial_days=14, trial_behavior=behavior)
    h.settle()
    assert h.tenant_row("trial")["billing_status"] == "trialing"
    advance(h.client, clock, T0 + 12 * DAY)  # Stripe's trial_will_end, 3 days before
    h.settle()
    reminders = [m for m in h.emails("trial@tenant.example") if "trial ends" in m["Subject"]]
    assert len(reminders) == 1
    assert "January 15, 2026" in reminders[0]["Subject"]
    assert "$99.00 per month including 100,000 queries" in reminders[0].get_content()
    # The daily scan finds the same trial and does not remind twice.
    scan = trial_reminders_job.execute_in_process(
        run_config={
            "ops": {"remind_trials_ending": {"config": {"as_of": "2026-01-13T00:00:00+00:00"}}}
        },
        instance=h.instance,
        resources=h.resources(),
    )
    assert scan.output_for_node("remind_trials_ending") == 0
    advance(h.client, clock, T0 + 14 * DAY + 2 * 3600)
    h.settle()
    row = h.tenant_row("trial")
    assert (row["billing_status"], row["api_access_enabled"]) == (status, access)
    assert row["subscription_status"] == h.client.v1.subscriptions.retrieve(subscription.id).status
    assert len([m for m in h.emails() if "trial ends" in m["Subject"]]) == 1


def test_dispatch_is_stable_until_due_again(billing_db_url: str) -> None:
    ids = [_store(billing_db_url, f"evt_d{i}", "customer.created", {"id": "c"}) for i in range(3)]
    queue = webhook_queue.events_queue(RetryPolicy(redispatch_seconds=300))
    with psycopg.connect(billing_db_url, row_factory=dict_row) as conn:
        first = queue.select_for_dispatch(conn, limit=10)
        again = queue.select_for_dispatch(conn, limit=10)
    assert first == [Dispatched(i, 1) for i in ids] and again == []
