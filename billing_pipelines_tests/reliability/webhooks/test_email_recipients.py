"""A bad recipient fails its own email only: the batch goes on, nothing is left `sending`.

The outbox run loaded from the project's definitions sends to a real SMTP server on loopback.
A recipient with CR/LF (header injection) or a comma (two recipients) is refused before SMTP
sees it, dead-lettered at once with a clear reason, and the run fails so the failure alerts.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest

from billing_pipelines.defs.notifications.resources import EmailResource
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.pg import database
from billing_pipelines.runs import code_location
from billing_pipelines_tests.webhook_harness import SmtpServer, query

BAD = {
    "a@bad.example\r\nBcc: victim@elsewhere.example": "U+000A, U+000D",
    "first@bad.example, second@bad.example": "','",
    "Finance <finance@bad.example>": "display name",
}


def _enqueue(url: str, recipients: list[str]) -> list[int]:
    pool = database.open_pool(url)
    try:
        with database.transaction(pool) as conn:
            for n, recipient in enumerate(recipients):
                notifications.enqueue(
                    conn,
                    dedup_key=f"test:{n}",
                    tenant_id=None,
                    template="ops_alert",
                    recipient=recipient,
                    context={"summary": f"s{n}", "kind": "k", "severity": "info", "details": {}},
                )
    finally:
        pool.close()
    return [int(r["id"]) for r in query(url, "SELECT id FROM notification_outbox ORDER BY id")]


@pytest.mark.parametrize("order", ["bad_first", "bad_last", "interleaved"])
def test_bad_recipients_fail_alone_and_the_batch_goes_on(
    billing_db_url: str, smtp_server: SmtpServer, tmp_path: Any, order: str
) -> None:
    good = ["one@good.example", "two@good.example", "Three@Good.Example"]
    bad = list(BAD)
    recipients = {
        "bad_first": bad + good,
        "bad_last": good + bad,
        "interleaved": [x for pair in zip(bad, good, strict=True) for x in pair],
    }[order]
    ids = _enqueue(billing_db_url, recipients)
    job = code_location().resolve_job_def("notification_delivery_job")
    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        result = job.execute_in_process(
            run_config={"ops": {"send_notifications": {"config": {"outbox_ids": ids}}}},
            instance=instance,
            resources={
                "billing_db": BillingDatabase(url=billing_db_url),
                "email": EmailResource(smtp_url=smtp_server.url, sender="b@billing.example"),
            },
            raise_on_error=False,
        )
    # The run reflects the failures: it fails (so the run-failure alert fires) ...
    assert not result.success
    rows = query(
        billing_db_url,
        "SELECT id, recipient, status, attempts, last_error FROM notification_outbox ORDER BY id",
    )
    by_recipient = {r["recipient"]: r for r in rows}
    # ... every good email went out, each to exactly one recipient ...
    assert sorted(m["To"] for m in smtp_server.messages) == sorted(good)
    assert all(by_recipient[g]["status"] == "sent" for g in good)
    # ... each bad one is dead at its first attempt, saying why; none is left `sending`.
    for recipient, reason in BAD.items():
        row = by_recipient[recipient]
        assert (row["status"], row["attempts"]) == ("dead", 1), recipient
        assert row["last_error"].startswith("invalid email address") and reason in row["last_error"]
    assert {r["status"] for r in rows} == {"sent", "dead"}
    # Each dead email is an alert row naming the row and the reason.
    dead_ids = {r["id"] for r in rows if r["status"] == "dead"}
    alerts = query(billing_db_url, "SELECT dedup_key, kind, details FROM alerts ORDER BY id")
    assert {a["kind"] for a in alerts} == {"email_dead_letter"}
    assert {a["dedup_key"] for a in alerts} == {f"email_dead:{i}" for i in dead_ids}
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_failure_data is not None and failure.step_failure_data.error is not None
    assert "3 email(s) dead-lettered" in failure.step_failure_data.error.message
