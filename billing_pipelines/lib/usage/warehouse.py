"""The usage warehouse (ClickHouse over HTTP via clickhouse-connect): one code path everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from billing_pipelines.lib.errors import (
    BillingConfigError,
    ServiceUnavailableError,
    describe_connection_error,
    redact_url,
)
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_DDL

if TYPE_CHECKING:
    import pandas as pd
    from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class WarehouseAddress:
    """Where the warehouse is, parsed from CLICKHOUSE_URL."""

    host: str
    port: int
    username: str
    password: str
    database: str
    secure: bool


def parse_clickhouse_url(url: str) -> WarehouseAddress:
    """Split CLICKHOUSE_URL into client arguments, or fail naming the setting."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https", "clickhouse"} or not parts.hostname:
        raise BillingConfigError(
            "CLICKHOUSE_URL is invalid: expected http(s)://user:password@host:8123/database"
        )
    secure = parts.scheme == "https"
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError:
        raise BillingConfigError("CLICKHOUSE_URL is invalid: the port is not a number") from None
    return WarehouseAddress(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=parts.path.strip("/") or "default",
        secure=secure,
    )


def connect(url: str, *, connect_timeout: int = 10, send_receive_timeout: int = 300) -> Client:
    """A clickhouse-connect client built exactly as production builds it."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import OperationalError

    address = parse_clickhouse_url(url)
    try:
        return clickhouse_connect.get_client(
            host=address.host,
            port=address.port,
            username=address.username,
            password=address.password,
            database=address.database,
            secure=address.secure,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            # Results are small aggregates; compression still pays for raw-event audits.
            compress=True,
        )
    except OperationalError as exc:
        raise ServiceUnavailableError(
            f"CLICKHOUSE_URL: cannot reach {redact_url(url)} ({describe_connection_error(exc)})"
        ) from None


def ensure_usage_schema(client: Client) -> None:
    """Create usage_events if missing (a no-op on a production warehouse that already has it)."""
    client.command(USAGE_EVENTS_DDL)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC half-open interval [00:00, next 00:00) that a daily partition covers."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


# How far back a query id is looked for before a day (or an invoice period): a re-logged query
# (the RAG API's cache, a retry across midnight) shows up seconds to hours after its first
# event, never days, so a day of look-back finds every earlier copy while keeping the scan to
# the day plus one.
DUPLICATE_HORIZON = timedelta(days=1)

# Billable queries are distinct query ids, never rows: the RAG API's cache can log one query twice.
# Tokens and embeddings are taken once per distinct (query, kind) for the same reason. A query id
# already seen in the day before counts on the day of its first event only (its copies here are
# duplicates), so a query logged on both sides of midnight is billed once.
DAILY_USAGE_SQL = """
SELECT
    tenant_id,
    toInt64(countIf(event_type = 'query' AND NOT seen_before)) AS billable_queries,
    toInt64(sumIf(tokens, NOT seen_before))                    AS tokens,
    toInt64(sumIf(embeddings, NOT seen_before))                AS embeddings,
    toInt64(sum(copies))                                       AS raw_events,
    toInt64(sum(copies) - countIf(NOT seen_before))            AS duplicate_events
FROM
(
    SELECT
        tenant_id,
        query_id,
        event_type,
        any(tokens_used)      AS tokens,
        any(embeddings_count) AS embeddings,
        count()               AS copies,
        (tenant_id, query_id) IN (
            SELECT tenant_id, query_id FROM usage_events
            WHERE timestamp >= {lookback:DateTime64(3, 'UTC')}
              AND timestamp < {start:DateTime64(3, 'UTC')}
        )                     AS seen_before
    FROM usage_events
    WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
    GROUP BY tenant_id, query_id, event_type
)
GROUP BY tenant_id
ORDER BY tenant_id
"""

DAILY_USAGE_COLUMNS = [
    "tenant_id",
    "billable_queries",
    "tokens",
    "embeddings",
    "raw_events",
    "duplicate_events",
]


def daily_usage(client: Client, day: date) -> pd.DataFrame:
    """Per-tenant usage for one UTC day, computed in the warehouse with bound parameters."""
    import pandas as pd

    start, end = day_bounds(day)
    result = client.query(
        DAILY_USAGE_SQL,
        parameters={"start": start, "end": end, "lookback": start - DUPLICATE_HORIZON},
    )
    frame = pd.DataFrame(result.result_rows, columns=DAILY_USAGE_COLUMNS)
    for column in DAILY_USAGE_COLUMNS[1:]:
        frame[column] = frame[column].astype("int64")
    return frame
