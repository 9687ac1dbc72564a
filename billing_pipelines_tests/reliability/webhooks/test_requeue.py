"""Dead letters after an outage longer than the backoff window: requeued, audited, applied.

On real parts (the Stripe sandbox, the receiver, PostgreSQL, SMTP, the project's sensors and
jobs). The outage is a handler that fails for every event, with a dead-letter threshold of one
attempt, so every event received during it ends `dead` with an alert, as a long outage would.
The requeue runs the jobs the project's definitions load (the launchpad's), and the CLI.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.pg import database
from billing_pipelines.lib.webhooks import handlers as webhook_handlers
from billing_pipelines.runs import code_location
from billing_pipelines_tests.cli_process import run_billing
from billing_pipelines_tests.support import API_KEY
from billing_pipelines_tests.webhook_harness import Harness, query

WEBHOOKS = ("webhook_events_sensor",)


def _requeue(h: Harness, job: str, **config: Any) -> dg.ExecuteInProcessResult:
    op = {
        "webhook_requeue_job": "requeue_dead_webhook_events",
        "notification_requeue_job": "requeue_dead_emails",
    }[job]
    return (
        code_location()
        .resolve_job_def(job)
        .execute_in_process(
            run_config={"ops": {op: {"config": config}}},
            instance=h.instance,
            resources={"billing_db": h.resources()["billing_db"]},
            raise_on_error=False,
        )
    )


def test_events_dead_after_an_outage_are_requeued_by_type_and_time_and_applied(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS", "1")
    real = webhook_handlers.handle

    def outage(ctx: Any, payload: Any) -> Any:
        raise RuntimeError("the tenants service is down")

    monkeypatch.setattr(webhook_handlers, "handle", outage)
    before_outage = datetime.now(UTC) - timedelta(seconds=1)
    h.tenant("acme")
    h.drain()
    h.pump(only=WEBHOOKS)
    events = query(h.db_url, "SELECT id, event_type, status FROM webhook_events ORDER BY id")
    assert events and {e["status"] for e in events} == {"dead"}
    dead_alerts = query(h.db_url, "SELECT kind FROM alerts WHERE kind = 'webhook_dead_letter'")
    assert len(dead_alerts) == len(events)
    assert h.tenant_row("acme")["stripe_subscription_id"] is None  # nothing applied

    monkeypatch.setattr(webhook_handlers, "handle", real)  # the outage is over
    types = sorted({e["event_type"] for e in events})
    one_type = "customer.subscription.created"
    assert one_type in types
    # Bad selections are refused with one clear line, and change nothing.
    refused = _requeue(h, "webhook_requeue_job", requested_by="ops", reason="fixed")
    assert not refused.success
    naive = _requeue(
        h, "webhook_requeue_job", since="2026-12-01T10:00:00", requested_by="ops", reason="x"
    )
    assert not naive.success
    assert {e["status"] for e in query(h.db_url, "SELECT status FROM webhook_events")} == {"dead"}

    # By type and time: only that type is requeued, audited, then processed.
    first = _requeue(
        h,
        "webhook_requeue_job",
        type=one_type,
        since=before_outage.isoformat(),
        requested_by="alice",
        reason="tenants service restored",
    )
    assert first.success
    chosen = [e["id"] for e in events if e["event_type"] == one_type]
    out = first.output_for_node("requeue_dead_webhook_events")
    assert out == {"requeued": chosen, "not_dead_or_unknown": []}
    rows = query(h.db_url, "SELECT id, status, attempts FROM webhook_events ORDER BY id")
    assert [(r["id"], r["status"], r["attempts"]) for r in rows if r["id"] in chosen] == [
        (i, "pending", 0) for i in chosen
    ]
    assert all(r["status"] == "dead" for r in rows if r["id"] not in chosen)
    audit = query(
        h.db_url,
        "SELECT actor, action, entity_type, entity_id, reason, before, after FROM audit_log "
        "WHERE action = 'webhook_events.requeue' ORDER BY id",
    )
    event_ids = query(
        h.db_url, "SELECT event_id FROM webhook_events WHERE id = ANY(%s) ORDER BY id", (chosen,)
    )
    assert [a["entity_id"] for a in audit] == [e["event_id"] for e in event_ids]
    for entry in audit:
        assert entry["actor"].startswith("alice (run ")
        assert entry["entity_type"] == "webhook_event"
        assert entry["reason"].startswith("tenants service restored (selected: type ")
        assert entry["before"]["status"] == "dead" and entry["before"]["attempts"] == 1
        assert "tenants service is down" in entry["before"]["last_error"]
        assert entry["after"] == {"id": entry["before"]["id"], "status": "pending", "attempts": 0}
    h.pump(only=WEBHOOKS)
    assert h.tenant_row("acme")["stripe_subscription_id"] is not None  # applied now

    # The rest by id, including one that is no longer dead: it is left as it is, and said so.
    rest = [e["id"] for e in events if e["id"] not in chosen]
    second = _requeue(
        h, "webhook_requeue_job", ids=[*rest, chosen[0]], requested_by="bob", reason="the rest"
    )
    assert second.output_for_node("requeue_dead_webhook_events") == {
        "requeued": rest,
        "not_dead_or_unknown": [chosen[0]],
    }
    h.pump(only=WEBHOOKS)
    statuses = {r["status"] for r in query(h.db_url, "SELECT status FROM webhook_events")}
    assert statuses <= {"processed", "ignored"}


def test_billing_notifications_requeue_from_the_cli(
    harness: Harness, embedded_services: dict[str, str], tmp_path: Path
) -> None:
    h = harness
    pool = database.open_pool(h.db_url)
    try:
        with database.transaction(pool) as conn:
            for n, template in enumerate(["ops_alert", "ops_alert", "ops_alert"]):
                notifications.enqueue(
                    conn,
                    dedup_key=f"alert:test:{n}",
                    tenant_id=None,
                    template=template,
                    recipient=f"ops{n}@billing.example",
                    context={"summary": f"s{n}", "kind": "k", "severity": "info", "details": {}},
                )
            # An SMTP outage that outlasted the retries: two of them are dead.
            conn.execute(
                "UPDATE notification_outbox SET status = 'dead', attempts = 8, "
                "last_error = 'SMTP 421: try later' WHERE dedup_key <> 'alert:test:2'"
            )
    finally:
        pool.close()
    env = {
        **os.environ,
        **embedded_services,
        "DATABASE_URL": h.db_url,
        "STRIPE_API_BASE": h.sandbox.url,
        "STRIPE_API_KEY": API_KEY,
        "BILLING_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    (tmp_path / "dagster").mkdir()

    def billing(*args: str) -> subprocess.CompletedProcess[str]:
        return run_billing(["notifications", "requeue", *args], env, timeout=180)

    bad = billing("--reason", "smtp back")  # no selection
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "error: choose the dead letters: by id, by type, or since a time",
    )
    bad_time = billing("--since", "yesterday", "--reason", "x")
    assert bad_time.returncode == 2 and len(bad_time.stderr.splitlines()) == 1
    assert "not a time" in bad_time.stderr
    done = billing("--type", "ops_alert", "--reason", "smtp relay fixed")
    assert done.returncode == 0, done.stderr
    ids = [r["id"] for r in query(h.db_url, "SELECT id FROM notification_outbox ORDER BY id")]
    assert done.stdout.splitlines() == [f"requeued 2 dead row(s): {ids[:2]}"]
    audit = query(h.db_url, "SELECT actor, entity_id, reason FROM audit_log ORDER BY id")
    assert [a["entity_id"] for a in audit] == ["alert:test:0", "alert:test:1"]
    assert all("(billing cli) (run " in a["actor"] for a in audit)
    assert all(a["reason"].startswith("smtp relay fixed (selected: type ops_alert)") for a in audit)
    h.pump(only=("notification_outbox_sensor",))
    assert sorted(m["To"] for m in h.smtp.messages) == [f"ops{n}@billing.example" for n in range(3)]
