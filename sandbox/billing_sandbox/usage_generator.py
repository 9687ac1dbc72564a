"""Synthetic usage: realistic, seeded usage_events inserted through clickhouse-connect.

Each tenant's events come from its own random stream (seed + tenant id), so a tenant's data does
not change when other tenants are added. The truth per tenant and day is the table itself:
distinct query_id of kind "query" is what billing must charge.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext

from billing_pipelines.lib.usage.tables import USAGE_EVENTS_COLUMNS, USAGE_EVENTS_TABLE
from billing_pipelines.lib.usage.warehouse import ensure_usage_schema

__all__ = [
    "GenerationSummary",
    "ensure_usage_schema",
    "generate_usage",
    "planned_daily_queries",
    "usage_chunks",
]

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
DAYS_PER_MONTH = 365.25 / 12
# Rows per insert: large enough that the HTTP round trip is noise, small enough that the
# batch's Python objects (about 400 bytes a row) stay in the tens of MiB.
BATCH_ROWS = 100_000
# A tenant's traffic on Saturday/Sunday relative to a weekday (B2B RAG usage drops at weekends).
WEEKEND_FACTOR = 0.45
# Size spread for tenants without an explicit volume: log-uniform multiplier of the base rate, wide
# enough that a starter-sized base puts some tenants far over their plan's included queries.
SIZE_SPREAD = (0.25, 4.0)
# Hour-of-day weights (UTC): quiet night, morning ramp, afternoon peak, evening tail.
_HOURS = np.arange(24)
HOUR_WEIGHTS = (
    0.15 + np.exp(-(((_HOURS - 14.5) / 4.0) ** 2)) + 0.3 * np.exp(-(((_HOURS - 9) / 2.0) ** 2))
)
HOUR_WEIGHTS = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()


@dataclass(frozen=True)
class GenerationSummary:
    """What one generate_usage call inserted (per-day truth lives in the table, not here)."""

    rows_inserted: int
    distinct_queries: int
    duplicates: int
    late_events: int
    embedding_events: int
    tenants: int
    start: date
    days: int
    seed: int


def _tenant_seed(seed: int, tenant: str) -> list[int]:
    # crc32 is stable across processes and Python versions, unlike hash().
    return [seed, zlib.crc32(tenant.encode())]


def _day_factors(start: date, days: int) -> np.ndarray:
    """Weekday/weekend multipliers normalised so a full week averages 1.0."""
    weekend = np.array([(start + timedelta(days=d)).weekday() >= 5 for d in range(days)])
    norm = 7 / (5 + 2 * WEEKEND_FACTOR)
    return np.where(weekend, WEEKEND_FACTOR, 1.0) * norm


def _daily_means(
    tenants: Sequence[str],
    seed: int,
    events_per_tenant_day: float | Mapping[str, float],
    monthly_queries: Mapping[str, int] | None,
) -> dict[str, float]:
    """Mean billable queries per tenant per day from an explicit volume or the seeded spread."""
    means: dict[str, float] = {}
    for tenant in tenants:
        if monthly_queries is not None and tenant in monthly_queries:
            means[tenant] = monthly_queries[tenant] / DAYS_PER_MONTH
        elif isinstance(events_per_tenant_day, Mapping):
            means[tenant] = float(events_per_tenant_day[tenant])
        else:
            rng = np.random.default_rng([*_tenant_seed(seed, tenant), 0])
            factor = np.exp(rng.uniform(np.log(SIZE_SPREAD[0]), np.log(SIZE_SPREAD[1])))
            means[tenant] = float(events_per_tenant_day) * float(factor)
    return means


def planned_daily_queries(
    tenants: Sequence[str],
    start: date,
    days: int,
    seed: int,
    events_per_tenant_day: float | Mapping[str, float] = 300.0,
    monthly_queries: Mapping[str, int] | None = None,
) -> dict[tuple[str, date], int]:
    """Distinct billable queries the generator draws per (tenant, UTC day), before any window."""
    means = _daily_means(tenants, seed, events_per_tenant_day, monthly_queries)
    factors = _day_factors(start, days)
    planned: dict[tuple[str, date], int] = {}
    for tenant in tenants:
        counts = np.random.default_rng([*_tenant_seed(seed, tenant), 1]).poisson(
            means[tenant] * factors
        )
        for d in range(days):
            planned[(tenant, start + timedelta(days=d))] = int(counts[d])
    return planned


def _random_hex(rng: np.random.Generator, n: int, width: int) -> list[str]:
    text = rng.bytes(n * width // 2).hex()
    return [text[i : i + width] for i in range(0, n * width, width)]


def _uuid_bytes(rng: np.random.Generator, n: int) -> list[bytes]:
    """Random version-4 UUIDs as 16 raw bytes each (clickhouse-connect's fastest UUID input)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    flat = raw.tobytes()
    return [flat[i : i + 16] for i in range(0, 16 * n, 16)]


def _tenant_day_counts(
    tenant: str, mean: float, start: date, days: int, seed: int, embedding_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """A tenant's billable queries and ingestion jobs per day: two small draws for the window."""
    factors = _day_factors(start, days)
    queries = np.random.default_rng([*_tenant_seed(seed, tenant), 1]).poisson(mean * factors)
    # Document ingestion jobs: the "embedding" events finance sees as a cost driver.
    ingests = np.random.default_rng([*_tenant_seed(seed, tenant), 2]).poisson(
        mean * factors * embedding_rate
    )
    return queries, ingests


def _day_events(
    tenant: str,
    day: date,
    queries: int,
    ingests: int,
    seed: int,
    duplicate_rate: float,
    late_rate: float,
) -> dict[str, np.ndarray]:
    """One tenant's rows for one UTC day as columns (timestamps as epoch milliseconds).

    The day draws from its own stream (seed, tenant, day), so a day's events do not depend on
    the window it was generated in, and only one tenant-day is ever held in memory.
    """
    rng = np.random.default_rng([*_tenant_seed(seed, tenant), 3, day.toordinal()])
    n = queries + ingests
    day_start = int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp() * 1000)
    # The first `queries` rows are queries, the rest ingestion jobs.
    is_query = np.arange(n) < queries
    hours = rng.choice(24, size=n, p=HOUR_WEIGHTS).astype(np.int64)
    ts = day_start + hours * MS_PER_HOUR + rng.integers(0, MS_PER_HOUR, size=n)

    tokens = np.where(
        is_query,
        np.clip(rng.lognormal(np.log(900), 0.6, n), 40, 32_000),  # prompt + completion
        np.clip(rng.lognormal(np.log(12_000), 0.9, n), 200, 2_000_000),  # document chunks
    ).astype(np.uint32)
    embeddings = np.where(
        is_query,
        1,
        np.maximum(1, tokens // 350),  # one per query; one per ~350-token chunk
    ).astype(np.uint32)
    latency = np.where(
        is_query, rng.lognormal(np.log(450), 0.5, n), rng.lognormal(np.log(2500), 0.7, n)
    ).astype(np.uint32)
    prefix = np.where(is_query, "q_", "e_")
    ids = np.char.add(prefix, np.array(_random_hex(rng, n, 24), dtype="U24"))

    # The cache double-logging bug: same query_id, new event_id, logged moments later, same day.
    dup = np.flatnonzero(rng.random(n) < duplicate_rate)
    dup_ts = np.minimum(ts[dup] + rng.integers(1, 2_000, size=dup.size), day_start + MS_PER_DAY - 1)
    kinds = np.where(is_query, "query", "embedding")
    columns = {
        "query_id": np.concatenate([ids, ids[dup]]),
        "timestamp": np.concatenate([ts, dup_ts]),
        "event_type": np.concatenate([kinds, kinds[dup]]),
        "tokens_used": np.concatenate([tokens, tokens[dup]]),
        "embeddings_count": np.concatenate([embeddings, embeddings[dup]]),
        "latency_ms": np.concatenate([latency, latency[dup]]),
        "duplicate": np.concatenate([np.zeros(n, bool), np.ones(dup.size, bool)]),
    }
    total = n + dup.size
    # Normal pipeline lag is seconds; late events (offline SDKs, replayed queues) land 6 h-3 days
    # after they happened, i.e. after that day's usage may already have been reported.
    late = rng.random(total) < late_rate
    lag = np.where(
        late,
        rng.integers(6 * MS_PER_HOUR, 3 * MS_PER_DAY, size=total),
        rng.integers(50, 5_000, size=total),
    )
    columns["ingested_at"] = columns["timestamp"] + lag
    columns["late"] = late
    columns["event_id"] = np.array(_uuid_bytes(rng, total), dtype=object)
    columns["tenant_id"] = np.full(total, tenant, dtype=object)
    return columns


def usage_chunks(
    tenants: Sequence[str],
    start: date,
    days: int,
    seed: int,
    events_per_tenant_day: float | Mapping[str, float] = 300.0,
    duplicate_rate: float = 0.02,
    late_rate: float = 0.01,
    embedding_rate: float = 0.05,
    monthly_queries: Mapping[str, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The synthetic usage one tenant-day at a time, tenants in order, days in order."""
    means = _daily_means(tenants, seed, events_per_tenant_day, monthly_queries)
    for tenant in tenants:
        queries, ingests = _tenant_day_counts(
            tenant, means[tenant], start, days, seed, embedding_rate
        )
        for offset in range(days):
            if queries[offset] + ingests[offset] == 0:
                continue
            yield _day_events(
                tenant,
                start + timedelta(days=offset),
                int(queries[offset]),
                int(ingests[offset]),
                seed,
                duplicate_rate,
                late_rate,
            )


def generate_usage(
    client: Client,
    tenants: Sequence[str],
    start: date,
    days: int,
    seed: int,
    events_per_tenant_day: float | Mapping[str, float] = 300.0,
    duplicate_rate: float = 0.02,
    late_rate: float = 0.01,
    embedding_rate: float = 0.05,
    monthly_queries: Mapping[str, int] | None = None,
    ingested_after: datetime | None = None,
    ingested_before: datetime | None = None,
    batch_rows: int = BATCH_ROWS,
) -> GenerationSummary:
    """Insert seeded synthetic usage for tenants over [start, start + days) into usage_events.

    events_per_tenant_day is the mean billable queries per tenant and UTC day: a number applies a
    seeded per-tenant size spread, a mapping gives exact means; monthly_queries overrides both for
    the tenants it names (e.g. 15_000 for a starter tenant that goes over its 10,000 included).
    ingested_after/before insert only rows whose ingested_at falls in [after, before): two calls
    with the same seed and adjacent windows deliver one data set in two waves (late arrivals).
    Rows are generated one tenant-day at a time and inserted in batches of about batch_rows, so
    memory stays bounded whatever the number of tenants and days.
    """
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    for name, rate in (("duplicate_rate", duplicate_rate), ("late_rate", late_rate)):
        if not 0 <= rate < 1:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    ensure_usage_schema(client)
    after_ms = None if ingested_after is None else int(ingested_after.timestamp() * 1000)
    before_ms = None if ingested_before is None else int(ingested_before.timestamp() * 1000)

    rows = distinct = duplicates = late_events = embedding_events = 0
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    # One insert context for every batch of this call (see _insert).
    context = client.create_insert_context(
        USAGE_EVENTS_TABLE, list(USAGE_EVENTS_COLUMNS), column_oriented=True
    )
    chunks = usage_chunks(
        tenants,
        start,
        days,
        seed,
        events_per_tenant_day,
        duplicate_rate,
        late_rate,
        embedding_rate,
        monthly_queries,
    )
    for cols in chunks:
        keep = np.ones(cols["timestamp"].size, bool)
        if after_ms is not None:
            keep &= cols["ingested_at"] >= after_ms
        if before_ms is not None:
            keep &= cols["ingested_at"] < before_ms
        if not keep.all():
            cols = {name: values[keep] for name, values in cols.items()}
        kept = int(cols["timestamp"].size)
        if kept == 0:
            continue
        rows += kept
        duplicates += int(cols["duplicate"].sum())
        late_events += int(cols["late"].sum())
        is_query = cols["event_type"] == "query"
        embedding_events += int((~is_query).sum())
        # Query ids are random 96-bit values drawn per day: they never repeat across days, so
        # the month's distinct count is the sum of the days'.
        distinct += int(np.unique(cols["query_id"][is_query]).size)
        pending.append(cols)
        pending_rows += kept
        if pending_rows >= batch_rows:
            _insert(client, context, pending)
            pending, pending_rows = [], 0
    if pending_rows:
        _insert(client, context, pending)
    return GenerationSummary(
        rows_inserted=rows,
        distinct_queries=distinct,
        duplicates=duplicates,
        late_events=late_events,
        embedding_events=embedding_events,
        tenants=len(tenants),
        start=start,
        days=days,
        seed=seed,
    )


def _insert(client: Client, context: InsertContext, parts: list[dict[str, np.ndarray]]) -> None:
    """One columnar Native insert (clickhouse-connect splits it into blocks on the wire)."""
    data = []
    for name in USAGE_EVENTS_COLUMNS:
        column = np.concatenate([part[name] for part in parts])
        # Python ints/strs/bytes take clickhouse-connect's fast paths; numpy scalars do not.
        data.append(column.tolist())
    # Setting the data replaces the previous batch's: the context refers to itself (it keeps a
    # bound method of its own), so a context per insert is garbage only the cyclic collector
    # frees, and in a process with many long-lived objects (Dagster's) that collection is rare
    # enough for every batch ever inserted to stay resident.
    context.data = data
    client.insert(context=context)
