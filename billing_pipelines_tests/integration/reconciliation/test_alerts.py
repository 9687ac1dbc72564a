"""Alerts: a failed ERROR check and a failed run notify the configured channels (the email
outbox and a chat webhook on loopback) once each, with a link to the run."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import dagster as dg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.definitions import defs
from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    subscription_state_diff,
    usage_invoice_audit,
)
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.webhook_harness import query


def _let_time_pass(url: str, seconds: float) -> None:
    """Move every delivery's queue times `seconds` into the past, as if that time had passed."""
    query(
        url,
        """
        UPDATE alert_deliveries SET
            next_attempt_at = next_attempt_at - make_interval(secs => %(s)s),
            claimed_at = claimed_at - make_interval(secs => %(s)s),
            dispatched_at = dispatched_at - make_interval(secs => %(s)s)
        """,
        {"s": seconds},
    )


class ChatServer:
    """A chat webhook on loopback that records every JSON body it receives."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    server = ChatServer()
    monkeypatch.setenv("ALERT_CHAT_WEBHOOK_URL", server.url)
    monkeypatch.setenv("ALERT_EMAIL", "oncall@billing.example")
    monkeypatch.setenv("DAGSTER_UI_URL", "https://dagster.billing.example")
    try:
        yield server
    finally:
        server.stop()


def tick(
    instance: dg.DagsterInstance,
    name: str,
    cursor: str | None,
    resources: dict[str, Any],
) -> str | None:
    """One evaluation of a loaded alert sensor, as the daemon's tick; returns the new cursor."""
    sensor = defs().resolve_sensor_def(name)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SensorResult):
        return result.cursor
    assert isinstance(result, dg.SkipReason), result
    return cursor


def test_failed_error_check_and_failed_run_alert_once_each(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    chat: ChatServer,
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    _, sub, _ = support.tenant(c, billing_db_url, "t-leaking")
    c.v1.subscriptions.cancel(sub)
    instance = dg.DagsterInstance.ephemeral()
    diff = dg.materialize(
        [stripe_subscription_snapshot, stripe_invoice_snapshot, subscription_state_diff],
        resources=resources,
        instance=instance,
    )
    assert diff.success  # a failed check does not fail the run: only the alert tells anyone
    run = instance.get_run_by_id(diff.run_id)
    assert run is not None
    sensor_resources = {"billing_db": BillingDatabase(url=billing_db_url)}
    # The run ended before any sensor tick (as if the daemon started later): the first tick,
    # with no cursor, still finds it; later ticks resume from the cursor and raise nothing new.
    cursor = tick(instance, "failed_check_alert_sensor", None, sensor_resources)
    assert cursor is not None
    assert tick(instance, "failed_check_alert_sensor", cursor, sensor_resources) == cursor
    tick(instance, "failed_check_alert_sensor", None, sensor_resources)  # seen twice: still once
    alerts = query(billing_db_url, "SELECT * FROM alerts ORDER BY id")
    # The leak check and the consistency check (an ERROR too: money is at risk), once each.
    assert [a["kind"] for a in alerts] == ["asset_check_failed"] * 2
    summaries = " ".join(a["summary"] for a in alerts)
    assert "no_canceled_subscription_served" in summaries
    assert "tenant_db_matches_stripe" in summaries
    assert len(chat.received) == 2
    text = next(m["text"] for m in chat.received if "no_canceled" in m["text"])
    assert "ERROR check no_canceled_subscription_served failed on subscription_state_diff" in text
    assert "revenue leak" in text and "t-leaking" in text
    assert "subscription_remediation_job" in text  # the next step travels with the alert
    assert f"https://dagster.billing.example/runs/{diff.run_id}" in text
    mails = query(billing_db_url, "SELECT * FROM notification_outbox")
    assert {(m["recipient"], m["template"]) for m in mails} == {
        ("oncall@billing.example", "ops_alert")
    }
    deliveries = query(billing_db_url, "SELECT * FROM alert_deliveries")
    assert {(d["status"], d["attempts"]) for d in deliveries} == {("sent", 1)}

    # A failed run: the audit before any invoice snapshot exists.
    query(billing_db_url, "DELETE FROM stripe_invoice_snapshots")
    failed = dg.materialize(
        [usage_invoice_audit], resources=resources, instance=instance, raise_on_error=False
    )
    assert not failed.success
    failed_run = instance.get_run_by_id(failed.run_id)
    assert failed_run is not None
    run_cursor = tick(instance, "failed_run_alert_sensor", None, sensor_resources)
    assert tick(instance, "failed_run_alert_sensor", run_cursor, sensor_resources) == run_cursor
    kinds = [a["kind"] for a in query(billing_db_url, "SELECT kind FROM alerts ORDER BY id")]
    assert kinds == ["asset_check_failed", "asset_check_failed", "run_failed"]
    assert len(chat.received) == 3
    assert "failed" in chat.received[2]["text"]
    assert f"/runs/{failed.run_id}" in chat.received[2]["text"]
    # The webhook URL is a secret: never stored with the alert.
    assert "secret-token" not in json.dumps(
        query(billing_db_url, "SELECT details FROM alerts"), default=str
    )


def test_unreachable_chat_webhook_is_retried_then_dead_lettered(
    billing_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing_pipelines.lib.alerts import channels as alerting
    from billing_pipelines.lib.pg import database

    failure = alerting.run_failure(run_id="r1", job_name="job", error="boom", ui_url=None)
    channel = alerting.AlertChannel(chat_webhook_url="http://127.0.0.1:9/hooks/secret-token")
    pool = database.open_pool(billing_db_url)
    try:
        with database.transaction(pool) as conn:
            assert alerting.raise_failure(conn, failure, channel)
            assert not alerting.raise_failure(conn, failure, channel)  # once per failure
        for attempt in range(1, alerting.MAX_CHAT_ATTEMPTS + 1):
            alerting.deliver_chat(
                lambda: database.transaction(pool), channel.chat_webhook_url or ""
            )
            # Each failure backs off: let the backoff pass before the next tick retries.
            _let_time_pass(billing_db_url, alerting.CHAT_POLICY.backoff_seconds(attempt))
    finally:
        pool.close()
    (row,) = query(billing_db_url, "SELECT * FROM alert_deliveries")
    assert row["status"] == "dead" and row["attempts"] == alerting.MAX_CHAT_ATTEMPTS
    assert "secret-token" not in (row["last_error"] or "")


def test_failing_chat_endpoint_backs_off_and_dead_letters_through_the_leased_queue(
    billing_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from billing_pipelines.lib.alerts import channels as alerting
    from billing_pipelines.lib.pg import database

    caplog.set_level(logging.DEBUG)
    endpoint = ChatServer(status=503)
    failure = alerting.run_failure(run_id="r2", job_name="job", error="boom", ui_url=None)
    channel = alerting.AlertChannel(chat_webhook_url=endpoint.url)
    pool = database.open_pool(billing_db_url)

    def tick() -> dict[str, int]:
        return alerting.deliver_chat(lambda: database.transaction(pool), endpoint.url)

    def delivery() -> dict[str, Any]:
        (row,) = query(
            billing_db_url,
            "SELECT *, extract(epoch FROM next_attempt_at - now()) AS wait FROM alert_deliveries",
        )
        return row

    try:
        with database.transaction(pool) as conn:
            assert alerting.raise_failure(conn, failure, channel)
        for attempt in range(1, alerting.MAX_CHAT_ATTEMPTS):
            assert tick() == {"sent": 0, "failed": 1, "dead": 0}
            assert len(endpoint.received) == attempt  # posted once per attempt
            row = delivery()
            assert row["status"] == "failed" and row["attempts"] == attempt
            assert row["claimed_by"] is None and row["claimed_at"] is None  # claim released
            assert row["last_error"] == "HTTPStatusError (HTTP 503)"
            backoff = alerting.CHAT_POLICY.backoff_seconds(attempt)
            assert backoff - 10 < float(row["wait"]) <= backoff
            # Within the backoff a tick leaves the delivery alone.
            assert tick() == {"sent": 0, "failed": 0, "dead": 0}
            assert len(endpoint.received) == attempt
            _let_time_pass(billing_db_url, backoff)
        assert tick() == {"sent": 0, "failed": 0, "dead": 1}
        # The dead letter stays visible and is never posted again, however long one waits.
        _let_time_pass(billing_db_url, 24 * 3600)
        assert tick() == {"sent": 0, "failed": 0, "dead": 0}
        with database.transaction(pool) as conn:
            assert alerting.CHAT_QUEUE.depth(conn) == {"dead": 1}
    finally:
        pool.close()
        endpoint.stop()
    assert len(endpoint.received) == alerting.MAX_CHAT_ATTEMPTS
    assert all("boom" in message["text"] for message in endpoint.received)
    row = delivery()
    assert row["status"] == "dead" and row["attempts"] == alerting.MAX_CHAT_ATTEMPTS
    assert row["sent_at"] is None
    # The webhook URL is a secret: neither stored nor logged.
    stored = json.dumps(query(billing_db_url, "SELECT * FROM alert_deliveries"), default=str)
    assert "secret-token" not in stored
    assert "secret-token" not in caplog.text


def test_a_delivery_left_claimed_by_a_dead_tick_is_taken_over_after_its_lease(
    billing_db_url: str,
) -> None:
    from billing_pipelines.lib.alerts import channels as alerting
    from billing_pipelines.lib.pg import database

    failure = alerting.run_failure(run_id="r3", job_name="job", error="boom", ui_url=None)
    channel = alerting.AlertChannel(chat_webhook_url="http://chat.invalid/hooks/secret-token")
    posted: list[dict[str, Any]] = []
    pool = database.open_pool(billing_db_url)

    def tick() -> dict[str, int]:
        return alerting.deliver_chat(
            lambda: database.transaction(pool),
            "http://chat.invalid/hooks/secret-token",
            post=lambda _url, body: posted.append(body),
        )

    try:
        with database.transaction(pool) as conn:
            assert alerting.raise_failure(conn, failure, channel)
            # A tick claimed the delivery, then died before posting.
            (due,) = alerting.CHAT_QUEUE.select_for_dispatch(conn, limit=10)
            alerting.CHAT_QUEUE.claim(conn, [due.id], owner="chat:died")
        assert tick() == {"sent": 0, "failed": 0, "dead": 0}  # the lease is still live
        assert posted == []
        _let_time_pass(billing_db_url, alerting.CHAT_POLICY.lease_seconds + 1)
        assert tick() == {"sent": 1, "failed": 0, "dead": 0}
        assert tick() == {"sent": 0, "failed": 0, "dead": 0}  # sent once, never again
    finally:
        pool.close()
    assert len(posted) == 1
    (row,) = query(billing_db_url, "SELECT * FROM alert_deliveries")
    assert row["status"] == "sent" and row["attempts"] == 2 and row["sent_at"] is not None
