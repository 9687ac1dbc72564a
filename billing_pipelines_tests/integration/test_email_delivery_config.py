"""Customer emails never look delivered when they went nowhere.

Without SMTP_URL and outside the sandbox, the outbox delivery job (as Dagster loads it) fails,
names SMTP_URL, and leaves the email unsent with its reason; a folder receives mail only when
asked for: `SMTP_URL=file:///path`, or the sandbox (BILLING_SANDBOX=1).
"""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg.rows import dict_row

from billing_pipelines.definitions import defs


@pytest.fixture
def outbox_env(
    fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh billing database and a BILLING_HOME of this test's own; no mail settings."""
    home = tmp_path / "home"
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("BILLING_HOME", str(home))
    for name in ("SMTP_URL", "BILLING_SANDBOX", "NOTIFICATION_FROM"):
        monkeypatch.delenv(name, raising=False)
    yield home


def _queue_email(database_url: str, recipient: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO notification_outbox (dedup_key, tenant_id, template, recipient, "
            "subject, body) VALUES (%s, 't1', 'payment_failed', %s, 'Payment failed', "
            "'Your card was declined.') RETURNING id",
            (f"test:{recipient}", recipient),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _outbox_row(database_url: str, row_id: int) -> dict[str, Any]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT status, attempts, sent_at, last_error FROM notification_outbox WHERE id = %s",
            (row_id,),
        ).fetchone()
    assert row is not None
    return row


def _deliver(row_id: int) -> dg.ExecuteInProcessResult:
    job = defs().resolve_job_def("notification_delivery_job")
    return job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"send_notifications": {"config": {"outbox_ids": [row_id]}}}},
        raise_on_error=False,
    )


def test_without_smtp_url_outside_the_sandbox_delivery_fails_loudly(
    outbox_env: Path, fresh_database_url: str
) -> None:
    row_id = _queue_email(fresh_database_url, "dunning@tenant.example")
    result = _deliver(row_id)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "SMTP_URL is not set" in str(failure.step_failure_data.error)
    row = _outbox_row(fresh_database_url, row_id)
    # Not sent, waiting for its backoff with the reason, after exactly one try (no op retry).
    assert (row["status"], row["attempts"], row["sent_at"]) == ("failed", 1, None)
    assert row["last_error"].startswith("SMTP_URL is not set")
    assert not (outbox_env / "mail").exists()


def test_an_explicit_file_sink_receives_the_mail_without_the_sandbox(
    outbox_env: Path, fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "explicit sink"
    monkeypatch.setenv("SMTP_URL", folder.as_uri())
    row_id = _queue_email(fresh_database_url, "ops@tenant.example")
    result = _deliver(row_id)
    assert result.success
    row = _outbox_row(fresh_database_url, row_id)
    assert (row["status"], row["attempts"]) == ("sent", 1)
    [eml] = list(folder.iterdir())
    assert message_from_bytes(eml.read_bytes())["To"] == "ops@tenant.example"
    assert not (outbox_env / "mail").exists()


def test_the_sandbox_writes_mail_to_its_folder(
    outbox_env: Path, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_SANDBOX", "1")
    row_id = _queue_email(fresh_database_url, "trial@tenant.example")
    assert _deliver(row_id).success
    assert _outbox_row(fresh_database_url, row_id)["status"] == "sent"
    [eml] = list((outbox_env / "mail").iterdir())
    assert message_from_bytes(eml.read_bytes())["To"] == "trial@tenant.example"
