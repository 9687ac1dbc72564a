"""Synthetic usage: realistic, seeded usage_events inserted through clickhouse-connect.

Each tenant's events come from its own random stream (seed + tenant id), so a tenant's data does
not change when other tenants are added. The truth per tenant and day is the table itself:
distinct query_id of kind "query" is what billing must charge.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from billing_pipelines.lib.usage.tables import (
    EVENT_TYPES,
    USAGE_EVENTS_COLUMNS,
    USAGE_EVENTS_TABLE,
)
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


# Each byte's two hex digits as ASCII codes, as one 16-bit lookup per byte (np.take over a
# 256-entry table is an order of magnitude faster than indexing the digits one at a time): ids
# are spelled out with array lookups, not per-row Python.
_HEX_PAIRS = np.array(
    [[ord(a), ord(b)] for a in "0123456789abcdef" for b in "0123456789abcdef"], dtype=np.uint8
).view(np.uint16)[:, 0]
_QUERY_PREFIX = np.frombuffer(b"q_", dtype=np.uint8)
_INGEST_PREFIX = np.frombuffer(b"e_", dtype=np.uint8)


def hex_ascii(raw: np.ndarray) -> np.ndarray:
    """Each row of bytes (n, k) as its lowercase hex digits, ASCII codes (n, 2k), as bytes.hex()."""
    return np.take(_HEX_PAIRS, raw).view(np.uint8).reshape(raw.shape[0], raw.shape[1] * 2)


def _random_ids(rng: np.random.Generator, n: int, queries: int) -> np.ndarray:
    """Query ids: a two-letter prefix by kind (the first `queries` rows are queries) and 24
    random hex digits, as fixed bytes (S26)."""
    raw = np.frombuffer(rng.bytes(n * 12), dtype=np.uint8).reshape(n, 12)
    text = np.empty((n, 26), dtype=np.uint8)
    text[:queries, :2] = _QUERY_PREFIX
    text[queries:, :2] = _INGEST_PREFIX
    text[:, 2:] = hex_ascii(raw)
    return text.view("S26").ravel()


def uuid_text(raw: np.ndarray) -> np.ndarray:
    """16 raw bytes per row as the canonical UUID text (8-4-4-4-12 hex digits), fixed bytes S36."""
    digits = hex_ascii(raw)
    text = np.full((raw.shape[0], 36), ord("-"), dtype=np.uint8)
    for source, target, width in ((0, 0, 8), (8, 9, 4), (12, 14, 4), (16, 19, 4), (20, 24, 12)):
        text[:, target : target + width] = digits[:, source : source + width]
    return text.view("S36").ravel()


def _uuid4(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random version-4 UUIDs as their canonical text (S36)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return uuid_text(raw)


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
    ids = _random_ids(rng, n, queries)

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
    columns["event_id"] = _uuid4(rng, total)
    columns["tenant_id"] = np.full(total, tenant)
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
    *,
    days_first: bool = False,
) -> Iterator[tuple[date, dict[str, np.ndarray]]]:
    """The synthetic usage one tenant-day at a time with its day: tenant by tenant, days in
    order, or (days_first) day by day, tenants in order.

    The order changes nothing drawn: each tenant's counts come from its own stream over the
    whole window and each tenant-day from its own stream, so both orders yield the same rows.
    """
    means = _daily_means(tenants, seed, events_per_tenant_day, monthly_queries)
    counts = {
        tenant: _tenant_day_counts(tenant, means[tenant], start, days, seed, embedding_rate)
        for tenant in tenants
    }
    order = (
        ((tenant, offset) for offset in range(days) for tenant in tenants)
        if days_first
        else ((tenant, offset) for tenant in tenants for offset in range(days))
    )
    for tenant, offset in order:
        queries, ingests = counts[tenant]
        if queries[offset] + ingests[offset] == 0:
            continue
        day = start + timedelta(days=offset)
        yield (
            day,
            _day_events(
                tenant,
                day,
                int(queries[offset]),
                int(ingests[offset]),
                seed,
                duplicate_rate,
                late_rate,
            ),
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
    on_day_stored: Callable[[date], object] | None = None,
) -> GenerationSummary:
    """Insert seeded synthetic usage for tenants over [start, start + days) into usage_events.

    events_per_tenant_day is the mean billable queries per tenant and UTC day: a number applies a
    seeded per-tenant size spread, a mapping gives exact means; monthly_queries overrides both for
    the tenants it names (e.g. 15_000 for a starter tenant that goes over its 10,000 included).
    ingested_after/before insert only rows whose ingested_at falls in [after, before): two calls
    with the same seed and adjacent windows deliver one data set in two waves (late arrivals).
    Rows are generated one tenant-day at a time and inserted in batches of about batch_rows, so
    memory stays bounded whatever the number of tenants and days.
    on_day_stored: the rows are drawn day by day instead (the same rows), and it is called with
    each day once every row of that day is in the warehouse, so a reader can start on the first
    days while later ones are drawn.
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
    # The warehouse stores one batch while the next is drawn: two cores' work overlaps, and
    # at most one batch waits, so memory stays at about two batches.
    inflight: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-insert") as inserter:
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
            days_first=on_day_stored is not None,
        )
        windowed = after_ms is not None or before_ms is not None
        reported = 0  # days before this offset have been reported stored

        def store_pending() -> None:
            """Insert what is pending and wait until every batch is stored."""
            nonlocal inflight, pending, pending_rows
            if pending_rows:
                inflight = _submit(inserter, inflight, client, pending)
                pending, pending_rows = [], 0
            if inflight is not None:
                inflight.result()
                inflight = None

        def report_through(offset: int) -> None:
            """Store what is pending, then report every day before `offset` stored."""
            nonlocal reported
            if on_day_stored is None or offset <= reported:
                return
            store_pending()
            for done in range(reported, offset):
                on_day_stored(start + timedelta(days=done))
            reported = offset

        for day, cols in chunks:
            report_through((day - start).days)
            if windowed:
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
            # the month's distinct count is the sum of the days'. (A set of a day's ids is a
            # third of np.unique's time on fixed-width byte strings.)
            distinct += len(set(cols["query_id"][is_query].tolist()))
            pending.append(cols)
            pending_rows += kept
            if pending_rows >= batch_rows:
                inflight = _submit(inserter, inflight, client, pending)
                pending, pending_rows = [], 0
        store_pending()
        report_through(days)
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


def _fixed_width_text(values: np.ndarray) -> pa.Array:
    """Fixed-width byte strings (S<n>) as an Arrow string column, with no Python object per row."""
    width = values.dtype.itemsize
    data = np.ascontiguousarray(values).view(np.uint8)
    offsets = np.arange(0, (values.size + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), values.size, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _repeated(labels: list[str], counts: list[int]) -> pa.DictionaryArray:
    """Runs of repeated labels as a dictionary column: one index per row, each label once."""
    dictionary = sorted(set(labels))
    codes = np.array([dictionary.index(label) for label in labels], dtype=np.int32)
    return pa.DictionaryArray.from_arrays(np.repeat(codes, counts), pa.array(dictionary))


def arrow_batch(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    """Tenant-days' columns as one Arrow table in usage_events' column order and types."""
    column = {
        name: np.concatenate([part[name] for part in parts])
        for name in USAGE_EVENTS_COLUMNS
        if name not in ("tenant_id", "event_type")
    }
    millis = pa.timestamp("ms", tz="UTC")
    # A tenant-day is one tenant: its rows are a run of one label.
    tenants = _repeated(
        [str(part["tenant_id"][0]) for part in parts], [part["tenant_id"].size for part in parts]
    )
    kinds = np.concatenate([part["event_type"] for part in parts])
    known = np.array(sorted(EVENT_TYPES))
    codes = np.searchsorted(known, kinds).astype(np.int32)
    if not (known[np.minimum(codes, known.size - 1)] == kinds).all():
        raise ValueError(f"event types outside {EVENT_TYPES}")
    arrays = {
        # The canonical text: ClickHouse parses it into its UUID type.
        "event_id": _fixed_width_text(column["event_id"]),
        "query_id": _fixed_width_text(column["query_id"]),
        "tenant_id": tenants,
        "timestamp": pa.array(column["timestamp"].astype(np.int64), millis),
        "event_type": pa.DictionaryArray.from_arrays(codes, pa.array(known.tolist())),
        "tokens_used": pa.array(column["tokens_used"].astype(np.uint32)),
        "embeddings_count": pa.array(column["embeddings_count"].astype(np.uint32)),
        "latency_ms": pa.array(column["latency_ms"].astype(np.uint32)),
        "ingested_at": pa.array(column["ingested_at"].astype(np.int64), millis),
    }
    return pa.table([arrays[name] for name in USAGE_EVENTS_COLUMNS], names=USAGE_EVENTS_COLUMNS)


def _submit(
    inserter: ThreadPoolExecutor,
    inflight: Future[None] | None,
    client: Client,
    parts: list[dict[str, np.ndarray]],
) -> Future[None]:
    """Start inserting a batch once the previous one is stored (its failure is raised here)."""
    table = arrow_batch(parts)
    if inflight is not None:
        inflight.result()
    return inserter.submit(_insert, client, table)


def _insert(client: Client, table: pa.Table) -> None:
    """One Arrow insert: the columns go over as buffers, with no Python object per row.

    clickhouse-connect's Native writer serializes strings and UUIDs one Python object at a time
    (most of the generation's time); the Arrow format hands the engine the numpy buffers.
    """
    client.insert_arrow(USAGE_EVENTS_TABLE, table)
