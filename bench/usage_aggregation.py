"""Benchmark: `daily_tenant_usage` on chDB at N events, against pandas, and Dagster's overhead.

Reproduce: `python bench/usage_aggregation.py --events 1000000 --events 10000000
--events 50000000`; the multi-day table: `python bench/usage_aggregation.py --table 1000000:30
--table 10000000:3`

Starts embedded PostgreSQL and the chDB warehouse bridge (its own process, as `billing sandbox
up` runs it) under a temporary BILLING_HOME. Per size N, one UTC day holds N usage events (the
table is emptied between sizes, so each size is one day partition on its own):

- data: generated inside chDB with `numbers()` and one INSERT ... SELECT (the Python generator
  would need minutes per 10 M rows), with the generator's shape: `--tenants` tenants with its
  log-uniform size spread, 1/21 embedding-ingest events, 2 % cache duplicates (same query id,
  new event id, same tokens, up to 2 s later, same day), hour-of-day weights, log-normal tokens;
  then merged to one part (OPTIMIZE FINAL), as a day at rest is. Not timed.
- bare query: `warehouse.daily_usage` (the function the asset's resource calls: the real SQL,
  clickhouse-connect over HTTP to the bridge, result as a DataFrame) -> events/s.
- pipeline: `daily_usage_job` for that day through `materialize_days` (what `billing usage
  materialize` runs) on the Postgres-backed Dagster instance: query, pandera validation,
  store in Postgres, events and metadata -> overhead over the bare query.
- with `--table EVENTS_PER_DAY:DAYS` (repeatable), a multi-day table instead: DAYS days of
  EVENTS_PER_DAY events each, one INSERT ... SELECT per day (not timed), then for the middle
  day, in rounds so the machine's load falls on all of them alike: the project's path
  (`warehouse.daily_usage`: clickhouse-connect to the bridge, served by the daily id table the
  materialized view fills at insert and the count projection), the engine's floor (a bare
  `uniqExact(query_id)` per tenant on that day, free to use the day-first projection), the path
  before the daily id table (`PROJECTION_DAILY_USAGE_SQL`: raw events of the day and its
  look-back from the day-first projection), and with `--with-old` the floor with projections off
  and the SQL from before the projection (`OLD_DAILY_USAGE_SQL`, the tenant-first layout).
  Every timing is a ratio to the floor measured in the same rounds; every path's answer must
  equal the project's, row for row.
- baseline: the same aggregation as a pandas group-by (distinct (tenant, query id, kind), then
  per tenant) in a separate process over the same rows exported to Parquet; the load is timed
  apart from the group-by, and the result must equal the warehouse's, row for row.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import psycopg
from billing_sandbox import services
from billing_sandbox.usage_generator import HOUR_WEIGHTS, SIZE_SPREAD

from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.usage.schema import validate_daily_usage

# Share of events that are a cache double-log, and of distinct events that are document
# ingests (the generator draws ingests at 5 % of queries: 0.05 / 1.05 of all).
DUPLICATE_RATE = 0.02
INGEST_SHARE = 0.05 / 1.05

# One INSERT ... SELECT in the warehouse. Every random draw is a hash of (seed, tenant, k), so a
# duplicate (copy = 1) repeats its original's query id and tokens; only its event id and
# timestamp differ, as with the RAG API's cache bug.
GENERATE_SQL = """
INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type, tokens_used,
                          embeddings_count, latency_ms, ingested_at)
SELECT
    generateUUIDv4(k)                                                    AS event_id,
    concat(if(is_query, 'q_', 'e_'), lower(hex(h_id)), substring(lower(hex(h_id2)), 1, 8))
                                                                         AS query_id,
    concat('bench-', leftPad(toString(t), 5, '0'))                       AS tenant_id,
    fromUnixTimestamp64Milli(ts_ms, 'UTC')                               AS timestamp,
    if(is_query, 'query', 'embedding')                                   AS event_type,
    tokens                                                               AS tokens_used,
    if(is_query, 1, greatest(1, intDiv(tokens, 350)))                    AS embeddings_count,
    toUInt32(exp(if(is_query, log(450), log(2500)) + if(is_query, 0.5, 0.7) * z2))
                                                                         AS latency_ms,
    fromUnixTimestamp64Milli(ts_ms + if(u_late < 0.01, 21600000 + h_lag % 237600000,
                                        50 + h_lag % 4950), 'UTC')      AS ingested_at
FROM
(
    SELECT
        t, k, copy, is_query, h_id, h_id2, z2, u_late, h_lag,
        toUInt32(if(is_query,
            least(greatest(exp(log(900) + 0.6 * z1), 40), 32000),
            least(greatest(exp(log(12000) + 0.9 * z1), 200), 2000000)))  AS tokens,
        least({day0:Int64} + 3600000 * hour + h_ms % 3600000 + copy * (1 + h_dup % 1999),
              {day0:Int64} + 86399999)                                   AS ts_ms
    FROM
    (
        SELECT
            t, k, copy,
            cityHash64({seed:UInt64}, t, k, 1)                           AS h_id,
            cityHash64({seed:UInt64}, t, k, 2)                           AS h_id2,
            (bitShiftRight(cityHash64({seed:UInt64}, t, k, 3), 11) + 0.5) / exp2(53) AS u_kind,
            u_kind >= {ingest_share:Float64}                             AS is_query,
            (bitShiftRight(cityHash64({seed:UInt64}, t, k, 4), 11) + 0.5) / exp2(53) AS u1,
            (bitShiftRight(cityHash64({seed:UInt64}, t, k, 5), 11) + 0.5) / exp2(53) AS u2,
            sqrt(-2 * log(u1)) * cos(2 * pi() * u2)                      AS z1,
            sqrt(-2 * log(u1)) * sin(2 * pi() * u2)                      AS z2,
            {hours:Array(UInt8)}[1 + (cityHash64({seed:UInt64}, t, k, 6) % 1000)] AS hour,
            cityHash64({seed:UInt64}, t, k, 7)                           AS h_ms,
            cityHash64({seed:UInt64}, t, k, 8)                           AS h_dup,
            (bitShiftRight(cityHash64({seed:UInt64}, t, k, 9, copy), 11) + 0.5) / exp2(53)
                                                                         AS u_late,
            cityHash64({seed:UInt64}, t, k, 10, copy)                    AS h_lag
        FROM
        (
            SELECT t, k,
                   (bitShiftRight(cityHash64({seed:UInt64}, t, k, 0), 11) / exp2(53))
                       < {duplicate_rate:Float64}                        AS duplicated
            FROM
            (
                SELECT number AS t, {counts:Array(UInt32)}[number + 1] AS n
                FROM numbers({tenants:UInt32})
            )
            ARRAY JOIN range(n) AS k
        )
        ARRAY JOIN range(1 + duplicated) AS copy
    )
)
"""

# The daily usage SQL before the day-first projection, kept to measure against: a set of the
# look-back day's (tenant, query id) pairs, then the day grouped by tenant, query id and kind.
OLD_DAILY_USAGE_SQL = """
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

# The daily usage SQL before the daily id table: one pass over the day and its day of look-back
# from raw events, served by the day-first projection `usage_by_day`, grouped by query-id hash.
PROJECTION_DAILY_USAGE_SQL = """
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

# The engine's floor for counting distinct ids: one hash set of query ids per tenant, one day.
FLOOR_SQL = """
SELECT tenant_id, uniqExact(query_id)
FROM usage_events
WHERE timestamp >= {start:DateTime64(3, 'UTC')} AND timestamp < {end:DateTime64(3, 'UTC')}
GROUP BY tenant_id
ORDER BY tenant_id
"""

NO_PROJECTIONS = {"optimize_use_projections": 0}

# The rows of one UTC day, counted from the table itself: the truth every path's raw events must
# equal. Every projection is off, the implicit ones too: on the warehouse's engine (ClickHouse
# 26.9, chDB 4.4) an ungrouped count() over a timestamp range can be served by the day-first
# projection for some parts and by the exact-count projection (the primary key's exact ranges)
# for others, and that mix counts some granules twice (seen at 10 M events a day x 30 days with
# merges running: 13.8 M rows reported for a day of 10 M). Grouped counts, as daily usage's, are
# not answered from exact ranges.
DAY_ROWS_SQL = (
    "SELECT count() FROM usage_events WHERE timestamp >= {start:DateTime64(3, 'UTC')} "
    "AND timestamp < {end:DateTime64(3, 'UTC')}"
)
TRUTH_SETTINGS = {"optimize_use_projections": 0, "optimize_use_implicit_projections": 0}

PANDAS_COLUMNS = ["tenant_id", "query_id", "event_type", "tokens_used", "embeddings_count"]
# chDB writes the file itself (INTO OUTFILE takes a literal, not a bound parameter).
EXPORT_SQL = (
    "SELECT tenant_id, query_id, event_type, tokens_used, embeddings_count, timestamp "
    "FROM usage_events INTO OUTFILE '{path}' TRUNCATE FORMAT Parquet"
)


def tenant_counts(tenants: int, distinct_events: int, seed: int) -> list[int]:
    """Distinct events per tenant: the generator's log-uniform size spread, summing to the total."""
    rng = np.random.default_rng(seed)
    low, high = np.log(SIZE_SPREAD[0]), np.log(SIZE_SPREAD[1])
    weights = np.exp(rng.uniform(low, high, tenants))
    counts = np.floor(weights / weights.sum() * distinct_events).astype(np.int64)
    counts[: distinct_events - int(counts.sum())] += 1  # hand out the rounding remainder
    return [int(c) for c in counts]


def hour_table() -> list[int]:
    """1,000 permille buckets -> UTC hour, drawn with the generator's hour-of-day weights."""
    cdf = np.cumsum(HOUR_WEIGHTS)
    cdf[-1] = 1.0
    return [int(h) for h in np.searchsorted(cdf, (np.arange(1000) + 0.5) / 1000)]


def generate(client: Any, day: date, events: int, tenants: int, seed: int) -> dict[str, int]:
    """Empty the table and insert about `events` rows for one UTC day; returns its counts."""
    warehouse.ensure_usage_schema(client)
    warehouse.clear_usage_events(client)
    day0 = int(datetime.combine(day, datetime.min.time(), tzinfo=UTC).timestamp() * 1000)
    client.command(
        GENERATE_SQL,
        parameters={
            "day0": day0,
            "seed": seed,
            "ingest_share": INGEST_SHARE,
            "duplicate_rate": DUPLICATE_RATE,
            "hours": hour_table(),
            "counts": tenant_counts(tenants, round(events / (1 + DUPLICATE_RATE)), seed),
            "tenants": tenants,
        },
    )
    client.command("OPTIMIZE TABLE usage_events FINAL")
    row = client.query(
        "SELECT count(), countIf(event_type = 'embedding'), min(timestamp), max(timestamp) "
        "FROM usage_events"
    ).result_rows[0]
    parts = client.query("SELECT count() FROM system.parts WHERE table = 'usage_events' AND active")
    assert row[2].date() == day and row[3].date() == day, row
    return {
        "rows": int(row[0]),
        "embedding_rows": int(row[1]),
        "parts": int(parts.result_rows[0][0]),
    }


def generate_table(
    client: Any, first_day: date, days: int, per_day: int, tenants: int, seed: int
) -> dict[str, int]:
    """Empty the table and insert `days` days of about `per_day` events each; returns counts."""
    warehouse.ensure_usage_schema(client)
    warehouse.clear_usage_events(client)
    counts = tenant_counts(tenants, round(per_day / (1 + DUPLICATE_RATE)), seed)
    for i in range(days):
        day0 = int(
            datetime.combine(
                first_day + timedelta(days=i), datetime.min.time(), tzinfo=UTC
            ).timestamp()
            * 1000
        )
        client.command(
            GENERATE_SQL,
            parameters={
                "day0": day0,
                "seed": seed + i,
                "ingest_share": INGEST_SHARE,
                "duplicate_rate": DUPLICATE_RATE,
                "hours": hour_table(),
                "counts": counts,
                "tenants": tenants,
            },
        )
    rows = client.query("SELECT count() FROM usage_events").result_rows[0][0]
    parts = client.query("SELECT count() FROM system.parts WHERE table = 'usage_events' AND active")
    return {"rows": int(rows), "parts": int(parts.result_rows[0][0])}


def day_row_count(client: Any, day: date) -> int:
    """The rows of one UTC day in usage_events, read from the table with no projection."""
    start, end = warehouse.day_bounds(day)
    result = client.query(
        DAY_ROWS_SQL, parameters={"start": start, "end": end}, settings=TRUTH_SETTINGS
    )
    return int(result.result_rows[0][0])


def table_comparison(
    client: Any, per_day: int, days: int, tenants: int, seed: int, repeat: int, with_old: bool
) -> dict[str, Any]:
    """The project's path, the floor and the old SQL on the middle day of a multi-day table."""
    first_day = datetime.now(UTC).date() - timedelta(days=days + 2)
    t = time.perf_counter()
    shape = generate_table(client, first_day, days, per_day, tenants, seed)
    day = first_day + timedelta(days=days // 2)
    start, end = warehouse.day_bounds(day)
    bounds = {"start": start, "end": end, "lookback": start - warehouse.DUPLICATE_HORIZON}
    day_rows = day_row_count(client, day)
    print(
        f"\n{per_day:,} events/day x {days} days: {shape['rows']:,} rows in {shape['parts']} "
        f"part(s), generated in {time.perf_counter() - t:.0f}s (not timed); measured day {day} "
        f"holds {day_rows:,}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    def project() -> Any:
        return warehouse.daily_usage(client, day)

    def floor() -> Any:
        return client.query(FLOOR_SQL, parameters=bounds).result_rows

    def projection_path() -> Any:
        return client.query(PROJECTION_DAILY_USAGE_SQL, parameters=bounds).result_rows

    def floor_no_projection() -> Any:
        return client.query(FLOOR_SQL, parameters=bounds, settings=NO_PROJECTIONS).result_rows

    def old() -> Any:
        return client.query(
            OLD_DAILY_USAGE_SQL, parameters=bounds, settings=NO_PROJECTIONS
        ).result_rows

    measures = {"project": project, "floor": floor, "projection_path": projection_path}
    if with_old:
        measures.update(floor_no_projection=floor_no_projection, old=old)
    parts = client.query(
        "SELECT table, count() FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table IN ('usage_events', 'usage_ids_by_day') GROUP BY table ORDER BY table"
    ).result_rows
    print(f"  active parts: {dict(parts)}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in measures}
    answers: dict[str, Any] = {}
    for name, run in measures.items():  # warm-up round, not timed
        answers[name] = run()
    for _ in range(repeat):
        for name, run in measures.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    usage = answers["project"]
    for name in ("projection_path", "old"):
        if name in answers:  # every exact path gives the same answer, row for row
            frame = pd.DataFrame(answers[name], columns=warehouse.DAILY_USAGE_COLUMNS)
            pd.testing.assert_frame_equal(usage, frame.astype(usage.dtypes.to_dict()))
    floor_ids = {str(t): int(n) for t, n in answers["floor"]}
    assert int(usage["raw_events"].sum()) == day_rows
    assert sum(floor_ids.values()) >= int(usage["billable_queries"].sum())
    result: dict[str, Any] = {
        "per_day": per_day,
        "days": days,
        "rows": shape["rows"],
        "day_rows": day_rows,
        "load": os.getloadavg()[0],
        "parts": dict(parts),
        **{name: _median(values) for name, values in times.items()},
    }
    for name, values in times.items():
        print(
            f"  {name}: {result[name] * 1000:.0f} ms (runs "
            f"{', '.join(f'{x * 1000:.0f}' for x in values)}) = "
            f"{result[name] / result['floor']:.2f}x the floor",
            flush=True,
        )
    return result


def _table_summary(results: list[dict[str, Any]]) -> None:
    print(
        "\n| events/day x days | rows | project's path | floor | x floor | projection path | "
        "x floor | old SQL | x floor | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        old = f"{r['old'] * 1000:.0f} ms | {r['old'] / r['floor']:.1f}x" if "old" in r else "— | —"
        print(
            f"| {r['per_day']:,} x {r['days']} | {r['rows']:,} | {r['project'] * 1000:.0f} ms | "
            f"{r['floor'] * 1000:.0f} ms | {r['project'] / r['floor']:.2f}x | "
            f"{r['projection_path'] * 1000:.0f} ms | "
            f"{r['projection_path'] / r['floor']:.2f}x | {old} | {r['load']:.1f} |"
        )


def pandas_daily_usage(frame: pd.DataFrame, day: date) -> pd.DataFrame:
    """The warehouse query as a pandas group-by: distinct (tenant, query, kind), then per tenant."""
    start, end = warehouse.day_bounds(day)
    rows = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)]
    per_query = (
        rows.groupby(["tenant_id", "query_id", "event_type"], sort=False, observed=True)
        .agg(
            tokens=("tokens_used", "first"),
            embeddings=("embeddings_count", "first"),
            copies=("tokens_used", "size"),
        )
        .reset_index()
    )
    per_query["is_query"] = per_query["event_type"] == "query"
    out = per_query.groupby("tenant_id", sort=True, observed=True).agg(
        billable_queries=("is_query", "sum"),
        tokens=("tokens", "sum"),
        embeddings=("embeddings", "sum"),
        raw_events=("copies", "sum"),
        distinct=("copies", "size"),
    )
    out["duplicate_events"] = out["raw_events"] - out["distinct"]
    out = out.drop(columns="distinct").reset_index()
    out["tenant_id"] = out["tenant_id"].astype(str)
    for column in warehouse.DAILY_USAGE_COLUMNS[1:]:
        out[column] = out[column].astype("int64")
    return out[warehouse.DAILY_USAGE_COLUMNS]


def _pandas_child(path: str, day: date, repeat: int, answer: Any) -> None:
    """Separate process, so its peak RSS is the baseline's alone: load, then group-by."""
    t0 = time.perf_counter()
    frame = pd.read_parquet(path)
    load_s = time.perf_counter() - t0
    loaded_rss = psutil.Process().memory_info().rss
    times = []
    for _ in range(repeat):
        t1 = time.perf_counter()
        result = pandas_daily_usage(frame, day)
        times.append(time.perf_counter() - t1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    answer.send({"load_s": load_s, "times": times, "rss": loaded_rss, "peak": peak, "df": result})


def pandas_baseline(path: Path, day: date, repeat: int) -> dict[str, Any]:
    """Run the pandas group-by in a fresh process and bring back its result and costs."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_pandas_child, args=(str(path), day, repeat, send))
    child.start()
    try:
        answer: dict[str, Any] = receive.recv()
    finally:
        child.join()
    return answer


def _bridge_peak_mib(pid: int | None) -> float:
    """The chDB bridge's peak resident memory so far (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append", help="events in the day")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measure (median)")
    parser.add_argument(
        "--pandas-max-events",
        type=int,
        default=50_000_000,
        help="skip the pandas baseline above this size (memory)",
    )
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--with-old",
        action="store_true",
        help="also time the SQL from before the projection and the floor without projections",
    )
    parser.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="EVENTS_PER_DAY:DAYS",
        help="measure the middle day of a multi-day table (only these, unless --events)",
    )
    args = parser.parse_args()
    tables = [tuple(int(x) for x in spec.split(":")) for spec in args.table]
    sizes = args.events or ([] if tables else [1_000_000, 10_000_000, 50_000_000])
    day = datetime.now(UTC).date() - timedelta(days=2)
    home = Path(tempfile.mkdtemp(prefix="bench-usage-aggregation-"))
    env = services.up(home, with_stripe=False)
    state = services._load_state(home)
    # The code location reads its settings from the environment, as `billing` does.
    os.environ.update({**env, "BILLING_HOME": str(home)})
    print(
        f"python {platform.python_version()}, pandas {pd.__version__}, {os.cpu_count()} vCPU, "
        f"load average {os.getloadavg()[0]:.2f} at start, day {day}, {args.tenants} tenants"
    )
    rows_out: list[dict[str, Any]] = []
    table_out: list[dict[str, Any]] = []
    try:
        from billing_pipelines.runs import code_location, materialize_days

        client = warehouse.connect(env["CLICKHOUSE_URL"], send_receive_timeout=1800)
        with psycopg.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO tenants (tenant_id, name, email, plan, billing_status) "
                "VALUES (%s, %s, %s, 'pro', 'active')",
                [(f"bench-{i:05d}", f"T{i}", f"t{i}@example.com") for i in range(args.tenants)],
            )
        # Warm-up, not timed: import and build the code location, one run on an empty day.
        t = time.perf_counter()
        code_location()
        warehouse.ensure_usage_schema(client)
        warehouse.clear_usage_events(client)
        list(materialize_days("daily_usage_job", day, day, echo=None))
        print(f"warm-up (definitions + first run, empty day): {time.perf_counter() - t:.1f}s")

        for per_day, days in tables:
            table_out.append(
                table_comparison(
                    client, per_day, days, args.tenants, args.seed, args.repeat, args.with_old
                )
            )
        for size in sizes:
            t = time.perf_counter()
            shape = generate(client, day, size, args.tenants, args.seed)
            print(
                f"\nN={size:,}: generated {shape['rows']:,} rows in {time.perf_counter() - t:.1f}s "
                f"(not timed), {shape['embedding_rows']:,} embedding rows, "
                f"{shape['parts']} part(s)",
                flush=True,
            )
            bare, usage = [], None
            for _ in range(args.repeat):
                t = time.perf_counter()
                usage = warehouse.daily_usage(client, day)
                bare.append(time.perf_counter() - t)
            assert usage is not None and len(usage) == args.tenants
            assert int(usage["raw_events"].sum()) == shape["rows"]
            print(
                f"  {len(usage)} tenants, {int(usage['duplicate_events'].sum()):,} duplicates, "
                f"{int(usage['billable_queries'].sum()):,} billable queries",
                flush=True,
            )
            t = time.perf_counter()
            validation = validate_daily_usage(
                usage, {f"bench-{i:05d}" for i in range(args.tenants)}
            )
            validate_s = time.perf_counter() - t
            assert validation.passed, validation.summary()
            pipeline = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                ((_, ok),) = materialize_days("daily_usage_job", day, day, echo=None)
                pipeline.append(time.perf_counter() - t)
                assert ok
            with psycopg.connect(env["DATABASE_URL"]) as conn:
                stored = conn.execute(
                    "SELECT count(*), sum(billable_queries) FROM daily_tenant_usage "
                    "WHERE usage_date = %s",
                    (day,),
                ).fetchone()
            assert stored == (len(usage), int(usage["billable_queries"].sum())), stored
            result: dict[str, Any] = {
                "size": size,
                "rows": shape["rows"],
                "bare": _median(bare),
                "bare_all": bare,
                "validate": validate_s,
                "pipeline": _median(pipeline),
                "pipeline_all": pipeline,
                "bridge_peak": _bridge_peak_mib(state.clickhouse_pid),
            }
            print(
                f"  bare query {result['bare']:.2f}s (runs {', '.join(f'{x:.2f}' for x in bare)})"
                f" = {shape['rows'] / result['bare'] / 1e6:.2f} M events/s; validation "
                f"{validate_s:.2f}s; daily_usage_job {result['pipeline']:.2f}s (runs "
                f"{', '.join(f'{x:.2f}' for x in pipeline)}); bridge peak RSS "
                f"{result['bridge_peak']:.0f} MiB",
                flush=True,
            )
            if size <= args.pandas_max_events:
                path = home / f"usage-{size}.parquet"
                t = time.perf_counter()
                client.command(EXPORT_SQL.format(path=str(path).replace("'", "")))
                export_s = time.perf_counter() - t
                base = pandas_baseline(path, day, args.repeat)
                path.unlink()
                expected = usage.reset_index(drop=True)
                pd.testing.assert_frame_equal(base["df"], expected, check_dtype=True)
                result.update(
                    pandas=_median(base["times"]),
                    pandas_load=base["load_s"],
                    pandas_rss=base["rss"] / 2**20,
                    pandas_peak=base["peak"] / 2**20,
                )
                print(
                    f"  pandas group-by {result['pandas']:.2f}s (runs "
                    f"{', '.join(f'{x:.2f}' for x in base['times'])}) = "
                    f"{shape['rows'] / result['pandas'] / 1e6:.2f} M events/s, equal result; "
                    f"Parquet export {export_s:.1f}s and load {base['load_s']:.1f}s not "
                    f"included; RSS {result['pandas_rss']:.0f} MiB loaded, peak "
                    f"{result['pandas_peak']:.0f} MiB",
                    flush=True,
                )
            rows_out.append(result)
    finally:
        services.down(home)
        shutil.rmtree(home, ignore_errors=True)  # the warehouse data: GBs at 50M events
    if rows_out:
        _table(rows_out)
    if table_out:
        _table_summary(table_out)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    sys.stdout.flush()


def _table(results: list[dict[str, Any]]) -> None:
    print(
        "\n| events (one day) | chDB bare query | events/s | daily_usage_job (Dagster) | "
        "overhead | pandas group-by | events/s | chDB speed-up | pandas peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        overhead = r["pipeline"] - r["bare"]
        if "pandas" in r:
            pandas_cols = (
                f"{r['pandas']:.2f} s | {r['rows'] / r['pandas'] / 1e6:.2f} M | "
                f"{r['pandas'] / r['bare']:.1f}x | {r['pandas_peak'] / 1024:.1f} GiB"
            )
        else:
            pandas_cols = "not run | — | — | —"
        print(
            f"| {r['rows']:,} | {r['bare']:.2f} s | {r['rows'] / r['bare'] / 1e6:.2f} M | "
            f"{r['pipeline']:.2f} s | {overhead:+.2f} s | {pandas_cols} |"
        )


if __name__ == "__main__":
    main()
