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

# Per UTC day, tenant and query id: which kinds of event it had that day and their tokens and
# embeddings, kept by a materialized view on every insert into usage_events. Daily usage reads
# the day's rows (about one per distinct query id: a 16-byte hash and a few small numbers instead
# of the id strings) and probes the day before's hashes for the look-back, instead of re-reading
# and re-grouping two days of raw events.
#
# Every column merges by max, so a row inserted twice changes nothing: the backfill may overlap
# rows the view has already written (the migration creates the view before it copies the table),
# and an event logged twice, late, or in another insert only sets the same flags again. Copies of
# one event carry the same tokens, so max takes that value. The id hash covers the tenant too
# (sipHash128 of both: 128 bits, the hash uniqExact itself counts distinct strings with), so the
# look-back is one fixed-size set. The view follows inserts only: rows deleted from usage_events
# (TRUNCATE, ALTER DELETE, DROP PARTITION) must be deleted here too (same monthly partitions).
USAGE_IDS_BY_DAY_TABLE = "usage_ids_by_day"
USAGE_IDS_BY_DAY_VIEW = "usage_ids_by_day_mv"

USAGE_IDS_BY_DAY_DDL = f"""
CREATE TABLE IF NOT EXISTS {USAGE_IDS_BY_DAY_TABLE}
(
    day               Date,
    tenant_id         String,
    id_hash           UInt128,
    queries           SimpleAggregateFunction(max, UInt8),
    ingests           SimpleAggregateFunction(max, UInt8),
    other_kinds       SimpleAggregateFunction(max, UInt8),
    query_tokens      SimpleAggregateFunction(max, UInt32),
    query_embeddings  SimpleAggregateFunction(max, UInt32),
    ingest_tokens     SimpleAggregateFunction(max, UInt32),
    ingest_embeddings SimpleAggregateFunction(max, UInt32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, tenant_id, id_hash)
"""

# One row per event, no GROUP BY: the insert stays a streaming pass (the backfill of a large
# table too) and the engine's merges collapse the copies; reads use FINAL.
USAGE_IDS_BY_DAY_SELECT = """
SELECT
    toDate(timestamp)                                               AS day,
    tenant_id,
    reinterpretAsUInt128(sipHash128(tenant_id, query_id))           AS id_hash,
    toUInt8(event_type = 'query')                                   AS queries,
    toUInt8(event_type = 'embedding')                               AS ingests,
    toUInt8(event_type NOT IN ('query', 'embedding'))               AS other_kinds,
    if(event_type = 'query', tokens_used, 0)                        AS query_tokens,
    if(event_type = 'query', embeddings_count, 0)                   AS query_embeddings,
    if(event_type = 'embedding', tokens_used, 0)                    AS ingest_tokens,
    if(event_type = 'embedding', embeddings_count, 0)               AS ingest_embeddings
FROM usage_events
"""

USAGE_IDS_BY_DAY_VIEW_DDL = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {USAGE_IDS_BY_DAY_VIEW} TO {USAGE_IDS_BY_DAY_TABLE}
AS {USAGE_IDS_BY_DAY_SELECT}
"""

# Rows already in usage_events when the view is created (the overlap with the view is harmless).
USAGE_IDS_BY_DAY_BACKFILL = f"INSERT INTO {USAGE_IDS_BY_DAY_TABLE} {USAGE_IDS_BY_DAY_SELECT}"

# Raw events per UTC day and tenant, kept by the engine per part of usage_events (so it follows
# inserts, merges, deletions and truncation, with no backfill race): daily usage's raw counts
# read a few rows per part instead of the day's events.
USAGE_COUNTS_BY_DAY_PROJECTION = "usage_counts_by_day"

USAGE_COUNTS_BY_DAY_PROJECTION_DDL = f"""
ALTER TABLE usage_events ADD PROJECTION IF NOT EXISTS {USAGE_COUNTS_BY_DAY_PROJECTION}
(
    SELECT toDate(timestamp), tenant_id, count()
    GROUP BY toDate(timestamp), tenant_id
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
