"""The sandbox switch, live-key detection, the explicit mail folder and what sandbox.env may set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from billing_sandbox import guard, services

from billing_pipelines import sandbox_mode
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.settings import load_sandbox_env


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("true", True), (" YES ", True), ("on", True)]
    + [("0", False), ("", False), ("false", False), ("no", False), ("sandbox", False)],
)
def test_the_switch_is_on_only_for_an_explicit_yes(value: str, on: bool) -> None:
    assert sandbox_mode.enabled({"BILLING_SANDBOX": value}) is on
    assert sandbox_mode.enabled({}) is False


@pytest.mark.parametrize(
    ("key", "live"),
    [
        ("sk_live_51HxAbc", True),
        ("rk_live_51HxAbc", True),
        (" sk_live_51HxAbc", True),
        ("sk_test_51HxAbc", False),
        ("rk_test_51HxAbc", False),
        ("pk_live_51HxAbc", False),  # a publishable key is not a secret key the CLI uses
        ("", False),
        (None, False),
    ],
)
def test_live_keys_are_recognised(key: str | None, live: bool) -> None:
    assert sandbox_mode.is_live_key(key) is live


def test_a_live_key_is_refused_only_with_the_switch_on() -> None:
    with pytest.raises(BillingConfigError, match="^STRIPE_API_KEY is a live key") as err:
        sandbox_mode.refuse_live_key({"stripe_api_key": "rk_live_secretvalue"})
    assert "secretvalue" not in str(err.value)
    sandbox_mode.refuse_live_key({"STRIPE_API_KEY": "sk_test_x"})


def test_missing_settings_are_named_in_one_line() -> None:
    sandbox_mode.require(["DATABASE_URL"], {"DATABASE_URL": "postgresql://a@b/c"})
    with pytest.raises(BillingConfigError) as err:
        sandbox_mode.require(
            ["DATABASE_URL", "CLICKHOUSE_URL", "DAGSTER_HOME"], {"CLICKHOUSE_URL": "  "}
        )
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("DATABASE_URL (postgresql://")
    assert "CLICKHOUSE_URL (https://" in message and "DAGSTER_HOME (" in message
    assert " are not set" in message and "BILLING_SANDBOX=1" in message


@pytest.mark.parametrize(
    ("url", "folder"),
    [
        ("file:///var/spool/billing-mail", Path("/var/spool/billing-mail")),
        ("file://localhost/srv/mail", Path("/srv/mail")),
        ("file:///srv/billing%20mail", Path("/srv/billing mail")),
        ("smtp://u:p@relay:587", None),
        ("smtps://relay", None),
        (None, None),
    ],
)
def test_file_sink_only_for_an_explicit_file_url(url: str | None, folder: Path | None) -> None:
    assert sandbox_mode.file_sink(url) == folder


@pytest.mark.parametrize("url", ["file://mailhost/srv/mail", "file:relative/folder"])
def test_a_file_sink_elsewhere_than_a_local_absolute_folder_is_refused(url: str) -> None:
    with pytest.raises(BillingConfigError, match="^SMTP_URL is invalid"):
        sandbox_mode.file_sink(url)


def test_a_real_stripe_key_never_takes_the_emulator_address_from_sandbox_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sandbox.env").write_text(
        "# written by billing sandbox up\n"
        "DATABASE_URL=postgresql://postgres@127.0.0.1:5999/billing\n"
        "STRIPE_API_BASE=http://127.0.0.1:5998\n"
        "STRIPE_API_KEY=sk_test_billing_pipelines_sandbox\n"
    )
    for name in ("DATABASE_URL", "STRIPE_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_someoneelsesaccount")
    exported = load_sandbox_env(tmp_path)
    assert exported == {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5999/billing"}
    assert "STRIPE_API_BASE" not in os.environ
    assert os.environ["STRIPE_API_KEY"] == "sk_test_someoneelsesaccount"


def test_without_a_stripe_setting_the_emulator_pair_is_exported_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sandbox.env").write_text(
        "STRIPE_API_BASE=http://127.0.0.1:5998\nSTRIPE_API_KEY=sk_test_sandboxkey\n"
    )
    for name in ("STRIPE_API_BASE", "STRIPE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert load_sandbox_env(tmp_path) == {
        "STRIPE_API_BASE": "http://127.0.0.1:5998",
        "STRIPE_API_KEY": "sk_test_sandboxkey",
    }


def test_the_guard_accepts_the_sandboxs_own_values_and_names_everything_else(
    tmp_path: Path,
) -> None:
    written = {
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:6001/billing",
        "DAGSTER_POSTGRES_URL": "postgresql://postgres@127.0.0.1:6001/dagster",
        "CLICKHOUSE_URL": "http://default@127.0.0.1:6002/default",
        "STRIPE_API_BASE": "http://127.0.0.1:6003",
    }
    (tmp_path / services.ENV_FILE).write_text(
        "# header\n" + "".join(f"{k}={v}\n" for k, v in written.items())
    )
    own = {
        **written,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "STRIPE_API_KEY": services.SANDBOX_STRIPE_KEY,
        "SMTP_URL": "file:///tmp/demo-mail",
        "UNRELATED": "x",
    }
    assert guard.offending_settings(own, tmp_path) == []
    assert guard.offending_settings({}, tmp_path) == []
    # The same database on another port is not the sandbox's; lower-case names count too.
    elsewhere = {
        **own,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:6009/billing",
        "alert_email": "oncall@example.com",
        "SMTP_URL": "smtp://127.0.0.1:25",
    }
    assert guard.offending_settings(elsewhere, tmp_path) == [
        "DATABASE_URL",
        "SMTP_URL",
        "ALERT_EMAIL",
    ]
    # Before the first `sandbox up` there is no file: any set address is someone else's.
    assert guard.offending_settings(written, tmp_path / "empty") == sorted(
        written, key=guard.SANDBOX_OWNED.index
    )
