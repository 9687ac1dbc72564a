"""The usage warehouse's ClickHouse table definitions, shared by production and the sandbox."""

USAGE_EVENTS_TABLE = "usage_events"

# The SaaS's metering table. One row per metered event. The RAG API's cache layer sometimes logs the
# same query twice (same query_id, new event_id): billing counts distinct query_id, never rows.
USAGE_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id         UUID,
    query_id         String,
    tenant_id        String,
    timestamp        DateTime64(3, 'UTC'),
    event_type       LowCardinality(String),
    tokens_used      UInt32,
    embeddings_count UInt32,
    latency_ms       UInt32,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (tenant_id, timestamp, query_id)
"""

# A day-first copy of the columns daily usage reads, kept by the engine inside usage_events
# (a projection): a day's query reads that day's granules instead of the whole monthly partition.
# Event ids, latency and ingestion times stay out of it (they are the widest columns and daily
# usage never reads them), so it costs about a third of the table's disk.
USAGE_BY_DAY_PROJECTION = "usage_by_day"

USAGE_BY_DAY_PROJECTION_DDL = f"""
ALTER TABLE usage_events ADD PROJECTION IF NOT EXISTS {USAGE_BY_DAY_PROJECTION}
(
    SELECT tenant_id, query_id, timestamp, event_type, tokens_used, embeddings_count
    ORDER BY (toDate(timestamp), tenant_id, query_id)
)
"""

USAGE_EVENTS_COLUMNS = (
    "event_id",
    "query_id",
    "tenant_id",
    "timestamp",
    "event_type",
    "tokens_used",
    "embeddings_count",
    "latency_ms",
    "ingested_at",
)

# Event kinds the RAG API emits. A "query" is the billable unit; embeddings and tokens are
# reported alongside so finance can see cost drivers.
EVENT_TYPES = ("query", "embedding")
