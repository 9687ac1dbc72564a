"""`billing sandbox up` writes where alert links point, and keeps what the demo recorded."""

from __future__ import annotations

from pathlib import Path

from billing_sandbox import services

from billing_pipelines.settings import SANDBOX_ENV_FILE


def env_file(home: Path) -> dict[str, str]:
    lines = (home / SANDBOX_ENV_FILE).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_sandbox_env_names_the_ui_and_keeps_remembered_settings_across_up(
    embedded_services: dict[str, str], billing_home: Path
) -> None:
    assert embedded_services["DAGSTER_UI_URL"] == "http://127.0.0.1:3000"
    assert env_file(billing_home)["DAGSTER_UI_URL"] == "http://127.0.0.1:3000"

    # A neutral key: this session's other commands read the same sandbox.env.
    services.remember(billing_home, {"BILLING_TEST_REMEMBERED": "kept"})
    assert env_file(billing_home)["BILLING_TEST_REMEMBERED"] == "kept"
    # The services are already running: `up` only rewrites the file, and keeps the setting.
    again = services.up(billing_home)
    assert again["BILLING_TEST_REMEMBERED"] == "kept"
    written = env_file(billing_home)
    assert written["BILLING_TEST_REMEMBERED"] == "kept"
    assert written["DATABASE_URL"] == embedded_services["DATABASE_URL"]
