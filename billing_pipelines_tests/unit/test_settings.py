"""Settings: bad input becomes one clear line naming the setting, and secrets never leak."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing_pipelines.lib.errors import (
    BillingConfigError,
    describe_connection_error,
    redact_url,
)
from billing_pipelines.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "CLICKHOUSE_URL",
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "STRIPE_WEBHOOK_SECRETS",
        "DAGSTER_POSTGRES_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://app:hunter2@db/billing", "got scheme 'mysql'"),
        ("DATABASE_URL", "postgresql://app:hunter2@db:notaport/billing", "port"),
        ("DATABASE_URL", "postgresql://app:hunter2@db:5432", "host and db"),
        ("CLICKHOUSE_URL", "ftp://app:hunter2@ch/usage", "got scheme 'ftp'"),
        ("CLICKHOUSE_URL", "http://app:hunter2@ch:99999/usage", "port"),
        ("STRIPE_API_BASE", "api.stripe.com", "http(s) base address"),
        ("STRIPE_MAX_NETWORK_RETRIES", "-1", "greater than or equal to 0"),
        ("STRIPE_METER_EVENTS_PER_SECOND", "0", "greater than 0"),
    ],
)
def test_malformed_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(BillingConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{name} is invalid:")
    assert expected in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_missing_urls_and_key_name_the_setting() -> None:
    settings = load_settings()
    with pytest.raises(BillingConfigError, match="^DATABASE_URL is not set"):
        settings.require_database_url()
    with pytest.raises(BillingConfigError, match="^CLICKHOUSE_URL is not set"):
        settings.require_clickhouse_url()
    with pytest.raises(BillingConfigError, match=r"^STRIPE_API_KEY is not set .*api\.stripe\.com"):
        settings.require_stripe_api_key()


def test_valid_settings_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db:5432/billing")
    monkeypatch.setenv("CLICKHOUSE_URL", "https://reader:pw@ch:8443/metering")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_123")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:12111/")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRETS", "whsec_new, whsec_old,")
    settings = load_settings()
    assert settings.require_stripe_api_key() == "sk_test_123"
    assert settings.stripe_api_base == "http://127.0.0.1:12111"
    assert not settings.uses_real_stripe
    assert settings.webhook_secrets() == ["whsec_new", "whsec_old"]
    # The key is a SecretStr: printing the settings never shows it.
    assert "sk_test_123" not in repr(settings)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://app:hunter2@db:5432/billing") == (
        "postgresql://app:***@db:5432/billing"
    )
    assert redact_url("http://ch:8123/default") == "http://ch:8123/default"


def test_connection_errors_are_summarised_without_details() -> None:
    refused = OSError('connection to server at "10.0.0.1", port 5432 failed: Connection refused')
    assert describe_connection_error(refused) == "connection refused: nothing listens there"
    assert describe_connection_error(OSError("timeout expired")) == "timed out"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-14T22:30:00-05:00", datetime(2026, 3, 15, 3, 30, tzinfo=UTC)),
        ("2025-12-31T23:59:59Z", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_business_clock_is_the_setting_when_set(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: datetime
) -> None:
    monkeypatch.setenv("BUSINESS_CLOCK", value)
    now = load_settings().now()
    assert now == expected and now.tzinfo == UTC


def test_business_clock_is_the_wall_clock_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUSINESS_CLOCK", raising=False)
    before = datetime.now(UTC)
    now = load_settings().now()
    assert before <= now <= datetime.now(UTC)


def test_business_clock_without_an_offset_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSINESS_CLOCK", "2026-03-14T22:30:00")
    with pytest.raises(BillingConfigError) as error:
        load_settings()
    assert str(error.value).startswith("BUSINESS_CLOCK is invalid: expected an ISO 8601 instant")
    assert "\n" not in str(error.value)
