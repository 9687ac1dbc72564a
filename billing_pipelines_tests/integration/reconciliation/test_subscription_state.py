"""The tenant database against Stripe: a subscription cancelled behind our back, a trial that
ended without a card, remediation (dry run, then for real), against the Stripe sandbox and a fresh
embedded PostgreSQL database."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.defs.reconciliation.assets import (
    CANCELED_CHECK,
    CONSISTENT_CHECK,
    TRIAL_CHECK,
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    subscription_state_diff,
)
from billing_pipelines.defs.reconciliation.jobs import subscription_remediation_job
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.support import advance
from billing_pipelines_tests.webhook_harness import query

DIFF = [stripe_subscription_snapshot, stripe_invoice_snapshot, subscription_state_diff]


def checks(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def findings(db_url: str) -> list[dict[str, Any]]:
    return query(
        db_url,
        "SELECT category, tenant_id, subscription_id, revenue_leak, detail "
        "FROM subscription_state_findings ORDER BY id",
    )


def remediate(resources: dict[str, Any], **config: Any) -> dg.ExecuteInProcessResult:
    return subscription_remediation_job.execute_in_process(
        resources=resources,
        run_config={"ops": {"remediate_subscription_state": {"config": config}}}
        if config
        else None,
    )


@pytest.fixture
def alert_email(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ALERT_EMAIL", "oncall@billing.example")
    monkeypatch.delenv("ALERT_CHAT_WEBHOOK_URL", raising=False)
    return "oncall@billing.example"


def test_subscription_cancelled_in_stripe_is_found_and_remediation_revokes_access(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    alert_email: str,
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    support.tenant(c, billing_db_url, "t-paying")
    _, gone, _ = support.tenant(c, billing_db_url, "t-leaking")

    clean = dg.materialize(DIFF, resources=resources)
    assert clean.success and all(e.passed for e in clean.get_asset_check_evaluations())
    assert findings(billing_db_url) == []

    c.v1.subscriptions.cancel(gone)  # directly in Stripe: no webhook reaches us
    found = dg.materialize(DIFF, resources=resources)
    assert found.success
    leak = checks(found)[CANCELED_CHECK]
    assert not leak.passed and leak.severity == dg.AssetCheckSeverity.ERROR
    assert "t-leaking" in leak.metadata["tenants"].value
    assert not checks(found)[CONSISTENT_CHECK].passed
    (row,) = findings(billing_db_url)
    assert row["category"] == "canceled_in_stripe_active_locally"
    assert (row["tenant_id"], row["subscription_id"], row["revenue_leak"]) == (
        "t-leaking",
        gone,
        True,
    )

    # From the UI the job is a dry run: it says what it would do and changes nothing.
    dry = remediate(resources)
    assert dry.success
    out = dry.output_for_node("remediate_subscription_state")
    assert out == {"flagged_tenants": 1, "would_change": 1, "unchanged": 0}
    assert query(billing_db_url, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 0
    leaking = query(billing_db_url, "SELECT * FROM tenants WHERE tenant_id = 't-leaking'")[0]
    assert leaking["api_access_enabled"] is True

    real = remediate(resources, dry_run=False)
    assert real.success
    assert real.output_for_node("remediate_subscription_state")["changed"] == 1
    leaking = query(billing_db_url, "SELECT * FROM tenants WHERE tenant_id = 't-leaking'")[0]
    assert leaking["api_access_enabled"] is False
    assert (leaking["billing_status"], leaking["subscription_status"]) == ("canceled", "canceled")
    paying = query(billing_db_url, "SELECT * FROM tenants WHERE tenant_id = 't-paying'")[0]
    assert paying["api_access_enabled"] is True
    (audit,) = query(billing_db_url, "SELECT * FROM audit_log")
    assert audit["entity_id"] == "t-leaking" and audit["action"] == "tenant.revoke_access"
    assert audit["actor"].startswith("reconciliation remediation")
    assert "canceled_in_stripe_active_locally" in audit["reason"]
    assert audit["before"]["api_access_enabled"] is True
    assert audit["after"]["api_access_enabled"] is False
    (alert,) = query(billing_db_url, "SELECT * FROM alerts")
    assert alert["kind"] == "reconciliation_remediation" and "t-leaking" in alert["summary"] + str(
        alert["details"]
    )
    (mail,) = query(billing_db_url, "SELECT * FROM notification_outbox")
    assert mail["recipient"] == alert_email and mail["template"] == "ops_alert"

    # Converged: the next diff is clean, and remediating again changes nothing.
    after = dg.materialize(DIFF, resources=resources)
    assert all(e.passed for e in after.get_asset_check_evaluations())
    again = remediate(resources, dry_run=False)
    assert again.output_for_node("remediate_subscription_state")["flagged_tenants"] == 0
    assert query(billing_db_url, "SELECT count(*) AS n FROM audit_log")[0]["n"] == 1


def test_remediation_alert_recipient_is_a_launchpad_knob_defaulting_to_alert_email(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    alert_email: str,
) -> None:
    support.catalog(stripe_client)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    _, gone, _ = support.tenant(stripe_client, billing_db_url, "t-leaking")
    stripe_client.v1.subscriptions.cancel(gone)
    assert dg.materialize(DIFF, resources=resources).success

    real = remediate(resources, dry_run=False, alert_email="finance@billing.example")
    assert real.output_for_node("remediate_subscription_state")["changed"] == 1
    recipients = query(billing_db_url, "SELECT DISTINCT recipient FROM notification_outbox")
    assert [r["recipient"] for r in recipients] == ["finance@billing.example"]  # not ALERT_EMAIL


def test_trial_ended_without_payment_method_appears_in_the_diff(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient, billing_db_url: str
) -> None:
    c = stripe_client
    support.catalog(c)
    resources = support.resources(stripe_sandbox.url, billing_db_url)
    _, trial_sub, clock = support.tenant(c, billing_db_url, "t-trial", card=None, trial_days=14)
    support.tenant(c, billing_db_url, "t-carded", card="pm_card_visa", trial_days=14)
    during = dg.materialize(DIFF, resources=resources)
    assert checks(during)[TRIAL_CHECK].passed  # still in the trial: nothing to say

    advance(c, clock, support.T0 + 14 * support.DAY + 2 * 3600)  # trial over, no card
    assert c.v1.subscriptions.retrieve(trial_sub).status == "past_due"
    result = dg.materialize(DIFF, resources=resources)
    assert result.success
    trial = checks(result)[TRIAL_CHECK]
    assert not trial.passed and trial.severity == dg.AssetCheckSeverity.ERROR
    assert "t-trial" in trial.metadata["tenants"].value
    rows = {(r["category"], r["tenant_id"]) for r in findings(billing_db_url)}
    assert ("trial_ended_without_payment_method", "t-trial") in rows
    assert ("status_mismatch", "t-trial") in rows  # the tenant DB still says trialing
    assert not any(tenant == "t-carded" for _, tenant in rows)

    # Remediation applies Stripe's past_due; the tenant keeps access while dunning runs.
    assert remediate(resources, dry_run=False).success
    row = query(billing_db_url, "SELECT * FROM tenants WHERE tenant_id = 't-trial'")[0]
    assert row["subscription_status"] == "past_due" and row["billing_status"] == "past_due"
