"""Typed connections to the billing database, the usage warehouse and Stripe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr, SecretStr

from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.settings import Settings, load_settings

if TYPE_CHECKING:
    import pandas as pd
    import psycopg
    from clickhouse_connect.driver.client import Client
    from psycopg_pool import ConnectionPool

    from billing_pipelines.lib.stripe.client import ClientSpec, StripeClient

# Every op or asset that calls Stripe joins this Dagster concurrency pool, so more workers never
# mean more concurrent Stripe work than the pool's limit.
STRIPE_POOL = "stripe_api"

# Migrations run once per process on first use, not on every op.
_MIGRATED: set[str] = set()


class BillingDatabase(dg.ConfigurableResource):
    """The billing PostgreSQL database: tenants, webhook queue, usage ledger, dunning, audit."""

    url: str
    max_connections: int = 5
    apply_migrations: bool = True

    _pool: ConnectionPool | None = PrivateAttr(default=None)

    def _validated_url(self) -> str:
        try:
            validated = Settings(database_url=SecretStr(self.url)).database_url
        except Exception:
            raise BillingConfigError(
                "DATABASE_URL is invalid: expected postgresql://user:password@host:5432/dbname"
            ) from None
        assert validated is not None
        return validated.get_secret_value()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from billing_pipelines.lib.pg import database, schema_version

        url = self._validated_url()
        if self.apply_migrations and url not in _MIGRATED:
            # One query answers "already at the shipped schema" (and proves the server is up);
            # Alembic (scripts, engine, lock: every fresh run process paid it) runs only when not.
            if not schema_version.at_shipped_head(url):
                from billing_pipelines.lib.pg import migrations

                migrations.upgrade_to_head(url)
            _MIGRATED.add(url)
        else:
            database.check_reachable(url)
        self._pool = database.open_pool(url, max_size=self.max_connections)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One pooled connection inside one transaction."""
        from billing_pipelines.lib.pg import database

        if self._pool is None:
            raise RuntimeError("BillingDatabase used outside a Dagster run: call setup first")
        with database.transaction(self._pool) as conn:
            yield conn

    def known_tenant_ids(self) -> set[str]:
        """Tenant ids the billing database knows; usage for anyone else is rejected."""
        with self.transaction() as conn:
            return {row["tenant_id"] for row in conn.execute("SELECT tenant_id FROM tenants")}

    def replace_daily_usage(self, day: date, usage: pd.DataFrame) -> int:
        """Idempotently store one day's usage: delete the partition, insert the new rows."""
        columns = [
            "tenant_id",
            "billable_queries",
            "tokens",
            "embeddings",
            "raw_events",
            "duplicate_events",
        ]
        rows = [
            (day, str(tenant), *(int(v) for v in values))
            for tenant, *values in usage[columns].itertuples(index=False, name=None)
        ]
        with self.transaction() as conn:
            conn.execute("DELETE FROM daily_tenant_usage WHERE usage_date = %s", (day,))
            with conn.cursor() as cur:
                cur.executemany(
                    """
                    INSERT INTO daily_tenant_usage (usage_date, tenant_id, billable_queries,
                        tokens, embeddings, raw_events, duplicate_events)
                    VALUES (%s, %s, %s, %s, %s, %s, %s)
                    """,
                    rows,
                )
        return len(rows)


class UsageWarehouse(dg.ConfigurableResource):
    """The ClickHouse usage warehouse, over HTTP with clickhouse-connect (chDB bridge locally)."""

    url: str
    send_receive_timeout_seconds: int = 300

    def client(self) -> Client:
        """This thread's client (built on first use, then reused: building one asks the server
        for its settings); clickhouse-connect clients are not shared across threads."""
        return warehouse.reused_client(
            self.url, send_receive_timeout=self.send_receive_timeout_seconds
        )

    def daily_usage(self, day: date) -> pd.DataFrame:
        """Per-tenant billable usage for one UTC day, distinct query ids only."""
        return warehouse.daily_usage(self.client(), day)


class StripeResource(dg.ConfigurableResource):
    """The Stripe API through the official SDK; the base address points at the sandbox locally."""

    api_key: str
    # Unset means "from the environment": STRIPE_API_BASE, STRIPE_MAX_NETWORK_RETRIES, ...
    api_base: str | None = None
    max_network_retries: int | None = None
    timeout_seconds: float | None = None

    def livemode(self) -> bool:
        """True for a live-mode key: only live-mode events may change tenants then."""
        from billing_pipelines.lib.stripe import client as stripe_api

        return stripe_api.is_live_key(self.api_key)

    def client(self) -> StripeClient:
        """A StripeClient with retries and timeouts; the key never appears in logs or metadata."""
        return self.client_spec().build()

    def client_spec(self) -> ClientSpec:
        """What builds this resource's client, for another process (a meter push shard)."""
        from billing_pipelines.lib.stripe import client as stripe_api

        if not self.api_key:
            raise BillingConfigError("STRIPE_API_KEY is not set")
        settings = load_settings()
        return stripe_api.ClientSpec(
            api_key=self.api_key,
            api_base=self.api_base or settings.stripe_api_base,
            max_network_retries=(
                settings.stripe_max_network_retries
                if self.max_network_retries is None
                else self.max_network_retries
            ),
            timeout_seconds=self.timeout_seconds or settings.stripe_timeout_seconds,
            limits=stripe_api.RateLimits.for_key(
                self.api_key,
                global_per_second=settings.stripe_requests_per_second,
                endpoint_per_second=settings.stripe_endpoint_requests_per_second,
                meter_events_per_second=settings.stripe_meter_events_per_second,
                retries_on_429=settings.stripe_rate_limit_retries,
            ),
        )


@dg.definitions
def resources() -> dg.Definitions:
    """Resources bound to environment variables, resolved when a run starts (not at import)."""
    return dg.Definitions(
        resources={
            "billing_db": BillingDatabase(url=dg.EnvVar("DATABASE_URL")),
            "warehouse": UsageWarehouse(url=dg.EnvVar("CLICKHOUSE_URL")),
            "stripe": StripeResource(api_key=dg.EnvVar("STRIPE_API_KEY")),
        }
    )
