"""The usage warehouse (ClickHouse over HTTP via clickhouse-connect): one code path everywhere."""

from __future__ import annotations

import threading
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
from billing_pipelines.lib.usage.tables import USAGE_EVENTS_TABLE, USAGE_IDS_BY_DAY_TABLE

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


_THREAD_CLIENTS = threading.local()


def reused_client(url: str, *, send_receive_timeout: int = 300) -> Client:
    """This thread's client for the warehouse at `url`, built once and then reused.

    Building a client asks the server for its version and settings (a round trip and a query
    of `system.settings`), which a run paid again for every warehouse read. A client is not
    shared between threads, so each thread keeps its own; its HTTP connections reconnect by
    themselves after the server restarts.
    """
    clients: dict[tuple[str, int], Client] | None = getattr(_THREAD_CLIENTS, "clients", None)
    if clients is None:
        clients = _THREAD_CLIENTS.clients = {}
    key = (url, send_receive_timeout)
    if key not in clients:
        clients[key] = connect(url, send_receive_timeout=send_receive_timeout)
    return clients[key]


def ensure_usage_schema(client: Client) -> None:
    """Create usage_events if missing and apply the warehouse's pending migrations."""
    migrate_warehouse(client)


def clear_usage_events(client: Client) -> None:
    """Empty usage_events and the daily id table its view fills (a demo, test or benchmark
    starting over): the view follows inserts only, so a truncation must be applied to both."""
    client.command(f"TRUNCATE TABLE {USAGE_EVENTS_TABLE}")
    client.command(f"TRUNCATE TABLE {USAGE_IDS_BY_DAY_TABLE}")


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
# Served by what the warehouse migrations keep at insert: `usage_ids_by_day` (one row per day,
# tenant and query-id hash; FINAL merges the rows that copies of one id left in several parts)
# and the `usage_counts_by_day` projection (raw events per day and tenant). "Seen before" is
# whether the id has a row (an event of any kind) on the day before: a set of that day's hashes.
# Both sides must name the same tenants: a tenant with events but no id rows (or the reverse)
# means the id table is out of step with usage_events (rows deleted from one only), and the day
# fails rather than billing from it; so does an event of a kind other than the two the
# warehouse knows.
DAILY_USAGE_SQL = """
SELECT
    tenant_id,
    toInt64(ids.billable_queries)                        AS billable_queries,
    toInt64(ids.tokens)                                  AS tokens,
    toInt64(ids.embeddings)                              AS embeddings,
    toInt64(events.raw_events)                           AS raw_events,
    toInt64(events.raw_events) - toInt64(ids.counted)    AS duplicate_events
FROM
(
    SELECT tenant_id, count() AS raw_events, 1 AS present
    FROM usage_events
    WHERE toDate(timestamp) = {day:Date}
    GROUP BY tenant_id
) AS events
FULL OUTER JOIN
(
    SELECT
        tenant_id,
        countIf(queries AND NOT seen_before)                                AS billable_queries,
        sumIf(query_tokens + ingest_tokens, NOT seen_before)                AS tokens,
        sumIf(query_embeddings + ingest_embeddings, NOT seen_before)        AS embeddings,
        sumIf(toUInt64(queries) + toUInt64(ingests), NOT seen_before)       AS counted,
        max(other_kinds)                                                    AS other_kinds,
        1                                                                   AS present
    FROM
    (
        SELECT
            tenant_id, queries, ingests, other_kinds,
            query_tokens, query_embeddings, ingest_tokens, ingest_embeddings,
            id_hash IN (
                SELECT id_hash FROM usage_ids_by_day WHERE day = {lookback:Date}
            ) AS seen_before
        FROM usage_ids_by_day FINAL
        WHERE day = {day:Date}
    )
    GROUP BY tenant_id
) AS ids USING (tenant_id)
WHERE throwIf(ids.other_kinds > 0,
              'usage_events holds an event type other than query and embedding') = 0
  AND throwIf(events.present = 0 OR ids.present = 0,
              'usage_ids_by_day is out of step with usage_events for this day') = 0
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

    result = client.query(
        DAILY_USAGE_SQL, parameters={"day": day, "lookback": day - DUPLICATE_HORIZON}
    )
    frame = pd.DataFrame(result.result_rows, columns=DAILY_USAGE_COLUMNS)
    for column in DAILY_USAGE_COLUMNS[1:]:
        frame[column] = frame[column].astype("int64")
    return frame
