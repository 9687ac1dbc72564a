"""One typed view of every setting, read from the environment at run time (never at import)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing_pipelines.lib.errors import BillingConfigError

STRIPE_DEFAULT_API_BASE = "https://api.stripe.com"

# `billing sandbox up` writes the embedded services' addresses here; only BILLING_SANDBOX=1 reads
# it (see sandbox_mode), and real environment variables always win over it.
SANDBOX_ENV_FILE = "sandbox.env"


def billing_home() -> Path:
    """Folder for local state: embedded databases, sandbox addresses, Dagster home."""
    return Path(os.environ.get("BILLING_HOME", ".billing")).resolve()


class Settings(BaseSettings):
    """Every knob of billing_pipelines; see .env.example for what each one means."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    # Connection URLs carry passwords: secrets, so repr(settings) and logs show "**********".
    database_url: SecretStr | None = Field(default=None, description="Billing PostgreSQL database.")
    dagster_postgres_url: SecretStr | None = Field(default=None, description="Dagster's storage.")
    clickhouse_url: SecretStr | None = Field(default=None, description="Usage warehouse (HTTP).")
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = STRIPE_DEFAULT_API_BASE
    stripe_webhook_secrets: SecretStr | None = None
    stripe_max_network_retries: int = Field(default=3, ge=0, le=10)
    stripe_timeout_seconds: float = Field(default=30.0, gt=0)
    # The process's request budget for the Stripe account (requests/s); unset: 80 % of
    # Stripe's documented limit for the key's mode (20 test, 80 live; 20 per endpoint).
    stripe_requests_per_second: float | None = Field(default=None, gt=0)
    stripe_endpoint_requests_per_second: float | None = Field(default=None, gt=0)
    # Meter events' own budget (live mode's separate limit); unset: 800 live, none in test
    # mode (there they take from the account's budget, as Stripe counts them).
    stripe_meter_events_per_second: float | None = Field(default=None, gt=0)
    # Retries of one request that Stripe answered 429, with exponential backoff and jitter.
    stripe_rate_limit_retries: int = Field(default=8, ge=0, le=20)
    usage_sync_lag_hours: float = Field(default=6.0, gt=0)
    # The largest day total per tenant and metric the meter push sends; above it the value is
    # corrupt (an overflow, a unit mix-up), refused, and the run fails naming it.
    meter_daily_value_ceiling: int = Field(default=1_000_000_000, ge=1)
    # Processes that send a day's meter events (tenants split by a stable hash, each with
    # 1/N of the Stripe budget); unset: one per 500 events/s of the push's rate.
    meter_push_shards: int | None = Field(default=None, ge=1, le=64)
    # Webhooks, dunning and notifications.
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    webhook_max_body_bytes: int = Field(default=512 * 1024, ge=1024)
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    smtp_url: SecretStr | None = None
    notification_from: str = "Billing <billing@localhost>"
    alert_email: str | None = None
    # Reconciliation and alerting: a Slack-compatible chat webhook for operator alerts
    # (its URL is a secret), and the Dagster UI address that alert links point at.
    alert_chat_webhook_url: SecretStr | None = None
    dagster_ui_url: str | None = None
    # The receiver's listener bounds (uvicorn): the largest request head (request line and
    # headers) it buffers, and the connections it serves at once before answering 503.
    webhook_max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    webhook_max_concurrency: int = Field(default=100, ge=1, le=10_000)
    # Prometheus /metrics has its own listener, never the public webhook one: loopback by
    # default; METRICS_PORT=0 turns it off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9787, ge=0, le=65535)
    # The business clock: what "now" is for health, usage sync lag, snapshot dates and trial
    # windows. Unset in production (the wall clock); the simulated month sets it to its Stripe
    # test clock's time, so a month simulated in minutes is judged on its own days.
    business_clock: datetime | None = None
    # The first day with usage: daily partitions start here (read when the code loads).
    usage_start_date: date = date(2026, 1, 1)

    @field_validator("business_clock")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("expected an ISO 8601 instant with its offset, e.g. 2026-10-31T00:30Z")
        return value

    @field_validator("database_url", "dagster_postgres_url", mode="before")
    @classmethod
    def _postgres_url(cls, value: str | SecretStr | None) -> str | None:
        value = _plain(value)
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"postgresql", "postgres"}:
            raise ValueError(
                f"expected postgresql://user:password@host:5432/dbname, got scheme {parts.scheme!r}"
            )
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError("expected postgresql://user:password@host:5432/dbname (host and db)")
        _port_of(parts)
        return value

    @field_validator("clickhouse_url", mode="before")
    @classmethod
    def _clickhouse_url(cls, value: str | SecretStr | None) -> str | None:
        value = _plain(value)
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https", "clickhouse"}:
            raise ValueError(
                f"expected http(s)://user:password@host:8123/database, got scheme {parts.scheme!r}"
            )
        if not parts.hostname:
            raise ValueError("expected http(s)://user:password@host:8123/database (no host)")
        _port_of(parts)
        return value

    @field_validator("stripe_api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("expected an http(s) base address such as https://api.stripe.com")
        return value.rstrip("/")

    @property
    def uses_real_stripe(self) -> bool:
        """True when requests go to Stripe itself rather than a local sandbox."""
        return urlsplit(self.stripe_api_base).hostname == "api.stripe.com"

    def now(self) -> datetime:
        """The business clock's current instant (UTC): the wall clock unless BUSINESS_CLOCK."""
        return (self.business_clock or datetime.now(UTC)).astimezone(UTC)

    def require_database_url(self) -> str:
        """The billing database URL, or a clear error naming DATABASE_URL."""
        if not self.database_url:
            raise BillingConfigError(
                "DATABASE_URL is not set: set DATABASE_URL=postgresql://... "
                "(BILLING_SANDBOX=1 starts an embedded one, for development only)"
            )
        return self.database_url.get_secret_value()

    def require_clickhouse_url(self) -> str:
        """The warehouse URL, or a clear error naming CLICKHOUSE_URL."""
        if not self.clickhouse_url:
            raise BillingConfigError(
                "CLICKHOUSE_URL is not set: set CLICKHOUSE_URL=https://host:8443/db "
                "(BILLING_SANDBOX=1 starts an embedded one, for development only)"
            )
        return self.clickhouse_url.get_secret_value()

    def require_stripe_api_key(self) -> str:
        """The Stripe secret key, or a clear error naming STRIPE_API_KEY."""
        if self.stripe_api_key is None or not self.stripe_api_key.get_secret_value():
            where = "api.stripe.com" if self.uses_real_stripe else self.stripe_api_base
            raise BillingConfigError(
                f"STRIPE_API_KEY is not set (requests would go to {where}): "
                "set STRIPE_API_KEY (BILLING_SANDBOX=1 starts the Stripe emulator, for "
                "development only)"
            )
        return self.stripe_api_key.get_secret_value()

    def webhook_secrets(self) -> list[str]:
        """All accepted webhook endpoint secrets (several during a rotation)."""
        if self.stripe_webhook_secrets is None:
            return []
        raw = self.stripe_webhook_secrets.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]


def _plain(value: str | SecretStr | None) -> str | None:
    """The raw text of a URL setting, whether it arrives as text or already as a secret."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _port_of(parts: object) -> None:
    try:
        _ = parts.port  # type: ignore[attr-defined]
    except ValueError as exc:
        raise ValueError("the port is not a number between 0 and 65535") from exc


_ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "dagster_postgres_url": "DAGSTER_POSTGRES_URL",
    "clickhouse_url": "CLICKHOUSE_URL",
    "stripe_api_base": "STRIPE_API_BASE",
    "stripe_max_network_retries": "STRIPE_MAX_NETWORK_RETRIES",
    "stripe_timeout_seconds": "STRIPE_TIMEOUT_SECONDS",
    "stripe_requests_per_second": "STRIPE_REQUESTS_PER_SECOND",
    "stripe_endpoint_requests_per_second": "STRIPE_ENDPOINT_REQUESTS_PER_SECOND",
    "stripe_meter_events_per_second": "STRIPE_METER_EVENTS_PER_SECOND",
    "stripe_rate_limit_retries": "STRIPE_RATE_LIMIT_RETRIES",
    "usage_sync_lag_hours": "USAGE_SYNC_LAG_HOURS",
    "meter_daily_value_ceiling": "METER_DAILY_VALUE_CEILING",
    "meter_push_shards": "METER_PUSH_SHARDS",
    "webhook_tolerance_seconds": "WEBHOOK_TOLERANCE_SECONDS",
    "webhook_max_body_bytes": "WEBHOOK_MAX_BODY_BYTES",
    "webhook_max_attempts": "WEBHOOK_MAX_ATTEMPTS",
    "smtp_url": "SMTP_URL",
    "notification_from": "NOTIFICATION_FROM",
    "alert_email": "ALERT_EMAIL",
    "alert_chat_webhook_url": "ALERT_CHAT_WEBHOOK_URL",
    "dagster_ui_url": "DAGSTER_UI_URL",
    "webhook_max_header_bytes": "WEBHOOK_MAX_HEADER_BYTES",
    "webhook_max_concurrency": "WEBHOOK_MAX_CONCURRENCY",
    "metrics_host": "METRICS_HOST",
    "metrics_port": "METRICS_PORT",
    "business_clock": "BUSINESS_CLOCK",
    "usage_start_date": "USAGE_START_DATE",
}


def load_settings() -> Settings:
    """Read settings now from the environment; bad values become one BillingConfigError line."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        name = _ENV_NAMES.get(field, field.upper())
        message = str(first["msg"]).removeprefix("Value error, ")
        raise BillingConfigError(f"{name} is invalid: {message}") from None


def load_sandbox_env(home: Path | None = None) -> dict[str, str]:
    """Export the running sandbox's addresses into os.environ, never overriding real settings."""
    path = (home or billing_home()) / SANDBOX_ENV_FILE
    exported: dict[str, str] = {}
    if not path.exists():
        return exported
    # A Stripe key and its address go together: a key from the environment never goes to the
    # emulator's address from this file, nor the emulator's key to a real address.
    stripe_pair = {"STRIPE_API_KEY", "STRIPE_API_BASE"}
    real_stripe = any(os.environ.get(name) for name in stripe_pair)
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key in stripe_pair and real_stripe:
            continue
        if key not in os.environ:
            os.environ[key] = value
            exported[key] = value
    return exported
