"""The README's operator commands against the sandbox: catalog, tenant, invoice preview, portal."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg

from billing_pipelines_tests.cli_process import run_billing


def _billing(args: list[str], env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "BILLING_HOME": str(home)}
    return run_billing(args, full, timeout=180)


def _fields(stdout: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in stdout.splitlines() if " " in line.strip())


def test_operator_lifecycle_commands(embedded_services: dict[str, str], billing_home: Path) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    env = embedded_services

    synced = _billing(["catalog", "sync"], env, billing_home)
    assert synced.returncode == 0, synced.stderr
    create = ["tenant", "create", "--tenant", tenant, "--plan", "pro", "--email", "a@b.test"]
    created = _billing(
        [*create, "--payment-method", "pm_card_visa", "--no-trial"], env, billing_home
    )
    assert created.returncode == 0, created.stderr
    first = _fields(created.stdout)
    assert first["subscription_status"] == "active"
    assert first["detail"] == "subscribed to pro"

    again = _fields(_billing(create, env, billing_home).stdout)
    assert again["subscription_id"] == first["subscription_id"]
    assert again["detail"] == "already onboarded"

    preview = _billing(
        ["invoice", "preview", "--tenant", tenant, "--plan", "enterprise"], env, billing_home
    )
    assert preview.returncode == 0, preview.stderr
    assert _fields(preview.stdout)["preview"].startswith("pro -> enterprise: ")

    portal = _billing(["portal", "--tenant", tenant], env, billing_home)
    assert portal.returncode == 0, portal.stderr
    assert portal.stdout.startswith("https://billing.stripe.com/p/session/")

    cancel = _billing(["tenant", "cancel", "--tenant", tenant, "--now"], env, billing_home)
    assert cancel.returncode == 0, cancel.stderr
    cancelled = _fields(cancel.stdout)
    assert cancelled["subscription_status"] == "canceled"
    assert cancelled["api_access_enabled"] == "False"


def test_lifecycle_command_on_unknown_tenant_is_one_line(
    embedded_services: dict[str, str], billing_home: Path
) -> None:
    result = _billing(
        ["tenant", "cancel", "--tenant", "nobody-at-all"], embedded_services, billing_home
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: cancel_subscription failed (run {errors[0].split('run ')[1].split(')')[0]}): "
        "unknown tenant 'nobody-at-all': onboard it first"
    ]
    assert "Traceback" not in result.stderr


def test_a_stripe_refusal_is_one_line_with_its_type_and_request(
    embedded_services: dict[str, str], billing_home: Path
) -> None:
    """A card the bank declines at signup: the command says so in one line, no traceback."""
    env = embedded_services
    assert _billing(["catalog", "sync"], env, billing_home).returncode == 0
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    result = _billing(
        [
            *("tenant", "create", "--tenant", tenant, "--plan", "pro", "--email", "a@b.test"),
            *("--payment-method", "pm_card_chargeDeclined", "--no-trial"),
        ],
        env,
        billing_home,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: onboard_tenant failed (run ")
    assert "Stripe CardError: " in errors[0] and "declined" in errors[0]
    assert "; request req_" in errors[0]


def test_a_stripe_error_outside_a_job_is_one_line_and_exit_code_1(
    embedded_services: dict[str, str], billing_home: Path
) -> None:
    """The portal for a tenant whose Stripe customer is gone: Stripe's 404, as one line."""
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    with psycopg.connect(embedded_services["DATABASE_URL"]) as conn:
        conn.execute(
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id) "
            "VALUES (%s, %s, %s, 'pro', 'cus_gone_from_stripe')",
            (tenant, tenant, "a@b.test"),
        )
    result = _billing(["portal", "--tenant", tenant], embedded_services, billing_home)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: Stripe invalid_request_error (resource_missing): ")
    assert "HTTP 404; request req_" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
