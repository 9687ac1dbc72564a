"""`billing doctor` names each exposing misconfiguration in one line: SMTP credentials without
TLS, metrics on a public interface, a BILLING_HOME other users can read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from billing_pipelines_tests.cli_process import run_billing


def _doctor(env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DATABASE_", "CLICKHOUSE_", "STRIPE_", "DAGSTER_", "SMTP_", "METRICS_")
        )
    }
    clean.update({"BILLING_HOME": str(home), **env})
    return run_billing(["doctor"], clean)


def test_doctor_reports_each_exposure_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    result = _doctor(
        {
            "SMTP_URL": "smtp://mailer:hunter2@smtp.example.com:587?starttls=false",
            "METRICS_HOST": "0.0.0.0",
            "METRICS_PORT": "9100",
        },
        home,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr + result.stdout
    errors = result.stderr.splitlines()
    expected = [
        "error: SMTP_URL sends credentials without TLS (starttls=false)",
        "error: METRICS_HOST=0.0.0.0 serves /metrics on a non-loopback interface (port 9100)",
        f"error: BILLING_HOME {home} is readable by other users (mode 0o755)",
    ]
    for prefix in expected:
        assert sum(line.startswith(prefix) for line in errors) == 1, (prefix, errors)
    for name in ("smtp tls", "metrics listener", "billing home permissions"):
        assert f"FAIL  {name}" in result.stdout


def test_doctor_passes_the_exposure_checks_on_safe_settings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    result = _doctor({"SMTP_URL": "smtps://mailer:hunter2@smtp.example.com"}, home)
    for name in ("smtp tls", "metrics listener", "billing home permissions"):
        assert f"ok    {name}" in result.stdout
    assert not any(
        line.startswith(("error: SMTP_URL", "error: METRICS_HOST", "error: BILLING_HOME"))
        for line in result.stderr.splitlines()
    )


def test_the_sandbox_home_and_its_env_file_are_private(
    embedded_services: dict[str, str], billing_home: Path
) -> None:
    import stat

    # As root the embedded PostgreSQL runs as another user that must traverse the home: x only.
    expected_home = 0o711 if os.geteuid() == 0 else 0o700
    assert stat.S_IMODE(billing_home.stat().st_mode) == expected_home
    assert stat.S_IMODE((billing_home / "sandbox.env").stat().st_mode) == 0o600
    result = _doctor({}, billing_home)
    assert "ok    billing home permissions" in result.stdout
