"""The annual billing cycle from the operator's command line, against the sandbox."""

from __future__ import annotations

import uuid
from pathlib import Path

from billing_pipelines_tests.integration.test_cli_lifecycle import _billing, _fields


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_annual_onboarding_and_cycle_preview_from_the_cli(
    embedded_services: dict[str, str], billing_home: Path
) -> None:
    env, tenant = embedded_services, f"cli-an-{uuid.uuid4().hex[:6]}"
    synced = _billing(["catalog", "sync"], env, billing_home)
    assert synced.returncode == 0, synced.stderr
    create = ["tenant", "create", "--tenant", tenant, "--email", "a@b.test", "--no-trial"]

    unknown = _billing([*create, "--plan", "pro", "--billing-cycle", "weekly"], env, billing_home)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert _errors(unknown.stderr) == [
        "error: --billing-cycle must be one of monthly, annual, got 'weekly'"
    ]

    no_yearly = _billing(
        [*create, "--plan", "starter", "--billing-cycle", "annual"], env, billing_home
    )
    assert no_yearly.returncode == 2 and "Traceback" not in no_yearly.stderr
    (line,) = _errors(no_yearly.stderr)
    assert line.endswith(
        "plan starter has no yearly base fee: annual billing needs base_yearly_cents "
        "in [plans.starter] of plans.toml"
    )

    created = _billing(
        [*create, "--plan", "pro", "--billing-cycle", "annual", "--payment-method", "pm_card_visa"],
        env,
        billing_home,
    )
    assert created.returncode == 0, created.stderr
    assert _fields(created.stdout)["detail"] == "subscribed to pro (annual)"

    preview = _billing(
        [
            "tenant",
            "change-plan",
            "--tenant",
            tenant,
            "--plan",
            "pro",
            "--billing-cycle",
            "monthly",
        ],
        env,
        billing_home,
    )
    assert preview.returncode == 0, preview.stderr
    assert _fields(preview.stdout)["preview"].startswith("pro (annual) -> pro (monthly): ")
