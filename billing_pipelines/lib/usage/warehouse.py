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
from billing_pipelines.lib.usage.migrations import migrate_warehouse

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
    """Create usage_events if missing and apply the warehouse's pending migrations."""
    migrate_warehouse(client)


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
#
# One pass over [look-back, end) served by the day-first projection (usage_by_day): each query id
# is grouped once, and "seen before" is whether any of its events (of any kind) falls before the
# day. Query ids are grouped by their 128-bit SipHash, the hash uniqExact itself counts distinct
# strings with (a collision among billions of ids is below 1e-20), because grouping by the
# string costs about half as much again. Kinds are the warehouse's two event types; an event of
# any other kind fails the query rather than being billed or dropped without a word. Copies of
# one event carry the same tokens; any() takes one of them.
DAILY_USAGE_SQL = """
SELECT
    tenant_id,
    toInt64(countIf(is_query AND NOT seen_before))                         AS billable_queries,
    toInt64(sumIf(tokens, NOT seen_before))                                AS tokens,
    toInt64(sumIf(embeddings, NOT seen_before))                            AS embeddings,
    toInt64(sum(copies))                                                   AS raw_events,
    toInt64(sum(copies) - sumIf(toUInt8(is_query) + toUInt8(is_ingest), NOT seen_before))
                                                                           AS duplicate_events
FROM
(
    SELECT
        tenant_id,
        min(timestamp) < {start:DateTime64(3, 'UTC')}                   AS seen_before,
        countIf(today)                                                  AS copies,
        countIf(today AND event_type = 'query') > 0                     AS is_query,
        countIf(today AND event_type = 'embedding') > 0                 AS is_ingest,
        anyIf(tokens_used, today AND event_type = 'query')
            + anyIf(tokens_used, today AND event_type = 'embedding')    AS tokens,
        anyIf(embeddings_count, today AND event_type = 'query')
            + anyIf(embeddings_count, today AND event_type = 'embedding') AS embeddings,
        countIf(event_type NOT IN ('query', 'embedding'))               AS unknown_kinds
    FROM
    (
        SELECT tenant_id, query_id, event_type, tokens_used, embeddings_count, timestamp,
               timestamp >= {start:DateTime64(3, 'UTC')} AS today
        FROM usage_events
        WHERE timestamp >= {lookback:DateTime64(3, 'UTC')}
          AND timestamp < {end:DateTime64(3, 'UTC')}
    )
    GROUP BY tenant_id, sipHash128(query_id)
    HAVING copies > 0
)
GROUP BY tenant_id
HAVING throwIf(sum(unknown_kinds) > 0,
               'usage_events holds an event type other than query and embedding') = 0
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
