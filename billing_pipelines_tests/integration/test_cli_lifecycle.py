"""The README's operator commands against the sandbox: catalog, tenant, invoice preview, portal."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

BILLING = [sys.executable, "-m", "billing_pipelines.cli"]


def _billing(args: list[str], env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "BILLING_HOME": str(home)}
    return subprocess.run([*BILLING, *args], env=full, capture_output=True, text=True, timeout=180)


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

    cancelled = _fields(
        _billing(["tenant", "cancel", "--tenant", tenant, "--now"], env, billing_home).stdout
    )
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
