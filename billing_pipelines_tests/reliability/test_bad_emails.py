"""A billing contact must be exactly one valid address: refused before any write or Stripe call.

Checked where an address enters (onboarding through the library, the Dagster job behind the
launchpad, and `billing tenant create`), and by the schema for any other writer.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle
from psycopg.rows import dict_row

from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.notifications.recipients import InvalidRecipientError
from billing_pipelines.lib.stripe import catalog as catalog_sync
from billing_pipelines.runs import code_location
from billing_pipelines_tests.cli_process import run_billing
from billing_pipelines_tests.support import API_KEY
from billing_pipelines_tests.webhook_harness import query

# (address, a fragment the one-line error must contain)
BAD_EMAILS = [
    ("ops@acme.example\r\nBcc: all@victims.example", "U+000D"),
    ("ops@acme.example, finance@acme.example", "','"),
    ("Ops <ops@acme.example>", "display name"),
    ("ops@acme.example;finance@acme.example", "';'"),
    ("ops.acme.example", "must have an @-sign"),
    ("ops@localhost", "should have a period"),
    ("", "email address is empty"),
]


@pytest.fixture
def catalog(stripe_client: stripe.StripeClient) -> Catalog:
    loaded = load_catalog()
    catalog_sync.sync_catalog(stripe_client, loaded)
    return loaded


def _footprint(sandbox: SandboxHandle) -> tuple[int, dict[str, int]]:
    state = sandbox.state
    with state.lock:
        return state.data.seq, {kind: len(rows) for kind, rows in state.data.objects.items()}


def test_onboarding_refuses_a_bad_email_before_any_write(
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    catalog: Catalog,
    tmp_path: Path,
) -> None:
    url = fresh_database_url
    before = _footprint(stripe_sandbox)
    for n, (email, fragment) in enumerate(BAD_EMAILS):
        request = lifecycle.OnboardRequest(tenant_id=f"t{n}", name="Acme", email=email, plan="pro")
        with psycopg.connect(url, row_factory=dict_row) as conn, conn.transaction():
            with pytest.raises(InvalidRecipientError) as refused:
                lifecycle.onboard(conn, stripe_client, catalog, request)
        message = str(refused.value)
        assert fragment in message and "\n" not in message, (email, message)
    # The job behind the launchpad and the CLI: a failed run carrying the same message.
    job = code_location().resolve_job_def("onboard_tenant")
    config = {"tenant_id": "acme", "name": "Acme", "email": BAD_EMAILS[1][0], "plan": "pro"}
    result = job.execute_in_process(
        run_config={"ops": {"onboard_tenant_op": {"config": config}}},
        resources={
            "billing_db": BillingDatabase(url=url),
            "stripe": StripeResource(
                api_key=API_KEY, api_base=stripe_sandbox.url, max_network_retries=0
            ),
        },
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error: Any = failure.step_failure_data and failure.step_failure_data.error
    assert "invalid email address" in (error.cause or error).message
    # Nothing stored, nothing created in Stripe.
    assert query(url, "SELECT tenant_id FROM tenants") == []
    assert query(url, "SELECT count(*) AS n FROM audit_log") == [{"n": 0}]
    assert _footprint(stripe_sandbox) == before
    # A good address is stored normalized (the domain lower-cased).
    request = lifecycle.OnboardRequest(
        tenant_id="acme", name="Acme", email="Ops@Acme.Example", plan="pro", trial=True
    )
    with psycopg.connect(url, row_factory=dict_row) as conn, conn.transaction():
        lifecycle.onboard(conn, stripe_client, catalog, request)
    assert query(url, "SELECT email FROM tenants") == [{"email": "Ops@acme.example"}]


def test_billing_tenant_create_refuses_a_bad_email_in_one_line_before_starting_anything(
    embedded_services: dict[str, str],
    fresh_database_url: str,
    stripe_sandbox: SandboxHandle,
    tmp_path: Path,
) -> None:
    before = _footprint(stripe_sandbox)
    env = {
        **os.environ,
        **embedded_services,
        "DATABASE_URL": fresh_database_url,
        "STRIPE_API_BASE": stripe_sandbox.url,
        "STRIPE_API_KEY": API_KEY,
        "BILLING_HOME": str(tmp_path / "home"),
    }
    for email, fragment in BAD_EMAILS[:2]:
        done = run_billing(
            ["tenant", "create", "--tenant", "acme", "--plan", "pro", "--email", email], env
        )
        lines = done.stderr.splitlines()
        assert (done.returncode, done.stdout, len(lines)) == (2, "", 1), done.stderr
        assert lines[0].startswith("error: invalid email address") and fragment in lines[0]
    assert not (tmp_path / "home").exists()  # no embedded service was started for it
    assert query(fresh_database_url, "SELECT tenant_id FROM tenants") == []
    assert _footprint(stripe_sandbox) == before


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("ALERT_EMAIL", "oncall@ops.example, cto@ops.example", "error: ALERT_EMAIL: invalid email"),
        ("ALERT_EMAIL", "oncall@ops.example\r\nBcc: x@y.example", "error: ALERT_EMAIL: invalid"),
        ("NOTIFICATION_FROM", "a@ops.example, b@ops.example", "error: NOTIFICATION_FROM: "),
    ],
)
def test_billing_doctor_names_an_alert_or_sender_address_that_cannot_work(
    embedded_services: dict[str, str],
    fresh_database_url: str,
    tmp_path: Path,
    setting: str,
    value: str,
    expected: str,
) -> None:
    env = {
        **os.environ,
        **embedded_services,
        "DATABASE_URL": fresh_database_url,
        "STRIPE_API_KEY": API_KEY,
        "BILLING_HOME": str(tmp_path / "home"),
    }

    def doctor(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return run_billing(["doctor"], {**env, **extra})

    good = doctor({"ALERT_EMAIL": "oncall@ops.example"})
    assert good.returncode == 0, good.stderr
    assert "ok    alert and sender addresses" in good.stdout.splitlines()
    bad = doctor({setting: value})
    assert bad.returncode == 2
    assert "FAIL  alert and sender addresses" in bad.stdout.splitlines()
    errors = bad.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith(expected), bad.stderr
    assert "Traceback" not in bad.stderr
