"""A process crash between a dunning side effect and its record, then a re-run.

Two crash points, on real parts (the Stripe sandbox over HTTP, the receiver, PostgreSQL, a real
SMTP server, the project's sensors and jobs):

- the dunning email: the SMTP server accepted the message, the process dies before the outbox
  row is marked `sent`; after the lease expires the row is sent again. This is at-least-once
  delivery, not exactly-once: the customer's mail system receives the message twice, but both
  copies carry the same Message-ID (derived from the outbox dedup key) so a mail client can
  collapse them. The email is never lost, and the outbox keeps one row, ending `sent`.
- the dunning step: every write of the step (dunning action, audit, tenant restriction, outbox
  row) is made and the process dies before the transaction commits. The step makes no Stripe
  write at all (lib/dunning.py only reads the invoice, subscription, customer and prices), so
  there is no Stripe side effect to double; the test checks that claim on the wire. Nothing of
  the crashed attempt is recorded, and re-running the same (invoice, step) records it once.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import stripe

from billing_pipelines.defs.dunning.jobs import dunning_step_job
from billing_pipelines.lib.dunning import steps as dunning
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines_tests.support import SimulatedCrash, advance
from billing_pipelines_tests.webhook_harness import (  # noqa: F401 - fixtures
    DAY,
    T0,
    Harness,
    billing_db_url,
    harness,
    query,
    smtp_server,
)

FIRST_FAIL = T0 + 31 * DAY + 3600  # the January invoice finalizes an hour after the period
# Stripe's default retry schedule: attempts 2, 3, 4 at +3, +5, +7 days after the first failure.
ATTEMPT_AT = {1: FIRST_FAIL + 60, 3: FIRST_FAIL + 5 * DAY + 60}
WEBHOOKS_AND_DUNNING = ("webhook_events_sensor", "dunning_sensor")
OUTBOX = ("notification_outbox_sensor",)
ONE, HALF = Decimal("1.00"), Decimal("0.50")


def _failing_invoice(h: Harness, attempts: int) -> str:
    """A tenant whose card fails until the open invoice has `attempts` failed attempts."""
    c = h.client
    customer, _, clock = h.tenant("acme")
    h.settle()
    bad = c.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer.id})
    c.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": bad.id}})
    advance(c, clock, ATTEMPT_AT[attempts])
    h.drain()
    invoice = c.v1.invoices.list({"customer": customer.id, "status": "open"}).data[0]
    assert invoice.attempt_count == attempts
    return str(invoice.id)


def _outbox(h: Harness) -> list[dict[str, Any]]:
    return query(
        h.db_url,
        "SELECT id, dedup_key, status, attempts, sent_at IS NOT NULL AS has_sent_at "
        "FROM notification_outbox ORDER BY id",
    )


# ---- the dunning email: SMTP accepted, the process dies before mark_sent ------------------------


def test_crash_after_smtp_accepts_before_mark_sent_resends_same_message_id(
    harness: Harness,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At-least-once, never lost: the re-run re-sends the email with the same Message-ID."""
    h = harness
    invoice_id = _failing_invoice(h, attempts=1)
    h.pump(only=WEBHOOKS_AND_DUNNING)
    key = f"dunning:{invoice_id}:1"
    [row] = _outbox(h)
    assert (row["dedup_key"], row["status"], row["attempts"]) == (key, "pending", 0)

    def dies(conn: Any, row_id: int) -> None:
        raise SimulatedCrash  # the SMTP server has the message; the outbox never hears of it

    real = notifications.mark_sent
    monkeypatch.setattr(notifications, "mark_sent", dies)
    assert h.pump(only=OUTBOX) == 1
    assert h.runs[-1][0] == "notification_delivery_job" and h.runs[-1][2] is False
    assert len(h.smtp.messages) == 1
    assert _outbox(h) == [
        {
            "id": row["id"],
            "dedup_key": key,
            "status": "sending",
            "attempts": 1,
            "has_sent_at": False,
        }
    ]
    # The lease holds: while the crashed run could still be alive, nobody sends it again.
    assert h.pump(only=OUTBOX) == 0
    assert len(h.smtp.messages) == 1

    # The lease (10 minutes) expires: move the row's clock back instead of waiting.
    monkeypatch.setattr(notifications, "mark_sent", real)
    query(
        h.db_url,
        "UPDATE notification_outbox SET claimed_at = claimed_at - interval '11 minutes', "
        "dispatched_at = dispatched_at - interval '11 minutes' WHERE id = %s",
        (row["id"],),
    )
    assert h.pump(only=OUTBOX) == 1
    assert h.runs[-1][0] == "notification_delivery_job" and h.runs[-1][2] is True
    first, second = h.emails("acme@tenant.example")
    assert len(h.smtp.messages) == 2
    expected_id = notifications.message_id(key, "example.com")
    assert first["Message-ID"] == second["Message-ID"] == expected_id
    assert first["Subject"] == second["Subject"] and first["Subject"].startswith("Payment failed")
    assert first.get_content() == second.get_content()
    assert _outbox(h) == [
        {"id": row["id"], "dedup_key": key, "status": "sent", "attempts": 2, "has_sent_at": True}
    ]
    # Sent is final: no third email, however often the sensors run.
    assert h.pump() == 0
    assert len(h.smtp.messages) == 2


# ---- the dunning step: all writes made, the process dies before the commit ----------------------


@pytest.fixture
def stripe_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every (method, path) the project's Stripe clients send over HTTP, as they are sent."""
    seen: list[tuple[str, str]] = []
    real = stripe.RequestsClient.request_with_retries

    def recording(self: stripe.RequestsClient, method: str, url: str, *args: Any, **kw: Any) -> Any:
        seen.append((method.upper(), url.split("://", 1)[-1].split("/", 1)[-1].split("?")[0]))
        return real(self, method, url, *args, **kw)

    monkeypatch.setattr(stripe.RequestsClient, "request_with_retries", recording)
    yield seen


def test_crash_before_dunning_step_commits_then_rerun_records_it_once(
    harness: Harness,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
    stripe_requests: list[tuple[str, str]],
) -> None:
    """No Stripe write in a step; a crash before commit records nothing; the re-run, once."""
    h = harness
    invoice_id = _failing_invoice(h, attempts=3)
    h.pump(only=("webhook_events_sensor",))
    before = h.tenant_row("acme")
    assert (before["api_access_enabled"], before["rate_limit_multiplier"]) == (True, ONE)
    audit_before = query(h.db_url, "SELECT coalesce(max(id), 0) AS id FROM audit_log")[0]["id"]

    real = dunning.execute_step
    reached: list[str] = []

    def dies_before_commit(ctx: Any, invoice: str, step: int) -> Any:
        outcome = real(ctx, invoice, step)
        reached.append(outcome.status)
        raise SimulatedCrash  # every write of the step is made; the commit never happens

    monkeypatch.setattr(dunning, "execute_step", dies_before_commit)
    stripe_requests.clear()
    assert h.pump(only=("dunning_sensor",)) == 1
    run_key = f"dunning:{invoice_id}:3:1"
    assert h.runs[-1] == ("dunning_step_job", run_key, False)
    assert reached == ["processed"]  # the step ran to its end inside the transaction
    # The step talks to Stripe only to read: nothing there to double on a re-run.
    assert stripe_requests and {method for method, _ in stripe_requests} == {"GET"}
    assert any(path == f"v1/invoices/{invoice_id}" for _, path in stripe_requests)
    # The crash rolled everything back: no action, no outbox row, no restriction, no audit.
    assert query(h.db_url, "SELECT step FROM dunning_actions") == []
    assert _outbox(h) == []
    assert h.tenant_row("acme")["rate_limit_multiplier"] == ONE
    assert query(
        h.db_url, "SELECT count(*) AS n FROM audit_log WHERE id > %s", (audit_before,)
    ) == [{"n": 0}]

    # Re-run the same (invoice, step) run, as a re-execution of the failed run does.
    monkeypatch.setattr(dunning, "execute_step", real)
    stripe_requests.clear()
    config = {"ops": {"execute_dunning_step": {"config": {"invoice_id": invoice_id, "step": 3}}}}
    rerun = dunning_step_job.execute_in_process(
        run_config=config, instance=h.instance, resources=h.resources()
    )
    assert rerun.success and rerun.output_for_node("execute_dunning_step") == "processed"
    assert {method for method, _ in stripe_requests} == {"GET"}
    # And once more (a second re-execution, or the sensor asking again): nothing new.
    again = dunning_step_job.execute_in_process(
        run_config=config, instance=h.instance, resources=h.resources()
    )
    assert again.output_for_node("execute_dunning_step") == "ignored"
    h.pump()

    actions = query(
        h.db_url,
        "SELECT step, action FROM dunning_actions WHERE invoice_id = %s ORDER BY step",
        (invoice_id,),
    )
    assert actions == [
        {"step": 1, "action": "skipped"},
        {"step": 2, "action": "skipped"},
        {"step": 3, "action": "final_warning"},
    ]
    outbox = _outbox(h)
    assert [(r["dedup_key"], r["status"], r["attempts"]) for r in outbox] == [
        (f"dunning:{invoice_id}:3", "sent", 1)
    ]
    mails = h.emails("acme@tenant.example")
    assert [m["Subject"][:12] for m in mails] == ["Final notice"]
    row = h.tenant_row("acme")
    assert (row["api_access_enabled"], row["rate_limit_multiplier"]) == (True, HALF)
    audit = query(
        h.db_url,
        "SELECT action, entity_id FROM audit_log WHERE id > %s ORDER BY id",
        (audit_before,),
    )
    restrictions = [a for a in audit if a["action"] == "tenant.rate_limit"]
    assert restrictions == [{"action": "tenant.rate_limit", "entity_id": "acme"}]
    assert [a["action"] for a in audit if a["entity_id"] == invoice_id] == ["dunning.final_warning"]
