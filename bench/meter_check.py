"""Benchmark: the meter totals check's Stripe summaries requests and seconds per push day.

Reproduce: `python bench/meter_check.py --tenants 500` (a week of days; add `--days 14`).

Starts embedded PostgreSQL and the chDB bridge under a temporary BILLING_HOME, and the Stripe
sandbox in this process: one unlimited server for the setup and one over the same state that
enforces test mode's limits (25 requests/s for the account and per endpoint, the summaries
endpoint's limit in live mode too). Setup (not timed): the plan catalog, N customers with a pro
subscription each, and for every day a pushed steady state as the meter push leaves it: the
validated daily partition, a delivered ledger row per tenant, the meter event in Stripe and the
day's raw events in the warehouse. Then the check (`meter_totals_match_warehouse`, alone) runs
for each day in order, after the day's push (which finds nothing changed and sends nothing),
as the daily job runs it: with the rotation (`every_days`
7, the default) and, for the last day, reading every tenant every day (`every_days` 1, the
check before the rotation). Each run reports its summaries requests (counted by the sandbox)
and the check step's wall seconds (from the run's event log); the client paces reads at 20/s
(80 % of 25/s).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import stripe
from billing_sandbox import services
from billing_sandbox.stripe import SandboxState, run_in_thread

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.metering.checks import meter_totals_match_warehouse
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.metering.planning import event_timestamp, identifier_for
from billing_pipelines.lib.stripe.catalog import sync_catalog
from billing_pipelines.lib.usage import warehouse as wh

API_KEY = "sk_test_bench_meter_check"
CHECK = "meter_totals_match_warehouse"
STEP = f"stripe_meter_reports_{CHECK}"


def _client(url: str) -> stripe.StripeClient:
    return stripe.StripeClient(api_key=API_KEY, base_addresses={"api": url}, max_network_retries=0)


def value(i: int, day: date) -> int:
    return 5 + (i * 7 + day.toordinal()) % 40


def setup(url: str, database_url: str, clickhouse_url: str, tenants: int, days: list[date]) -> None:
    """Customers, subscriptions, tenant rows, and each day pushed as the meter push leaves it."""
    client = _client(url)
    sync_catalog(client, load_catalog())
    prices = client.v1.prices.list(
        {"lookup_keys": ["pro_base_monthly", "pro_queries_overage_monthly"]}
    ).data

    def one(i: int) -> tuple[str, str, str]:
        tenant = f"bench-{i:05d}"
        cus = client.v1.customers.create({"metadata": {"tenant_id": tenant}})
        sub = client.v1.subscriptions.create(
            {"customer": cus.id, "items": [{"price": p.id} for p in prices]}
        )
        return tenant, cus.id, sub.id

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(tenants)))

    def send(args: tuple[int, str, date]) -> None:
        i, customer, day = args
        tenant = rows[i][0]
        client.v1.billing.meter_events.create(
            {
                "event_name": "rag_api_queries",
                "identifier": identifier_for(tenant, "queries", day, 1),
                "timestamp": event_timestamp(day, 1),
                "payload": {"stripe_customer_id": customer, "value": str(value(i, day))},
            }
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, [(i, c, d) for i, (_, c, _) in enumerate(rows) for d in days]))
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
            "stripe_subscription_id, billing_status) VALUES (%s, %s, %s, 'pro', %s, %s, 'active')",
            [(t, t, f"{t}@example.com", c, s) for t, c, s in rows],
        )
        cur.executemany(
            "INSERT INTO daily_tenant_usage (usage_date, tenant_id, billable_queries, tokens, "
            "embeddings, raw_events, duplicate_events) VALUES (%s, %s, %s, 0, 0, %s, 0)",
            [(d, t, value(i, d), value(i, d)) for d in days for i, (t, _, _) in enumerate(rows)],
        )
        cur.executemany(
            "INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value, "
            "value_version, identifier, stripe_customer_id, meter_event_name, status, "
            "event_timestamp, run_id, delivered_at) VALUES (%s, 'queries', %s, %s, 1, %s, %s, "
            "'rag_api_queries', 'delivered', to_timestamp(%s), 'bench', now())",
            [
                (t, d, value(i, d), identifier_for(t, "queries", d, 1), c, event_timestamp(d, 1))
                for d in days
                for i, (t, c, _) in enumerate(rows)
            ],
        )
    ch = wh.connect(clickhouse_url)
    wh.ensure_usage_schema(ch)
    wh.clear_usage_events(ch)
    for day in days:
        # Query n of tenant i exists when n < value(i, day): distinct ids, one event each.
        ch.command(
            """
            INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
                tokens_used, embeddings_count, latency_ms)
            SELECT generateUUIDv4(), concat(t, '-', {day:String}, '-', toString(n)), t,
                   {start:DateTime64(3, 'UTC')} + toIntervalSecond(n * 60), 'query', 0, 0, 30
            FROM (SELECT concat('bench-', leftPad(toString(intDiv(number, 64)), 5, '0')) AS t,
                         intDiv(number, 64) AS i, number % 64 AS n
                  FROM numbers({rows:UInt64}))
            WHERE n < 5 + (i * 7 + {ordinal:UInt64}) % 40
            """,
            parameters={
                "day": day.isoformat(),
                "start": wh.day_bounds(day)[0],
                "rows": tenants * 64,
                "ordinal": day.toordinal(),
            },
        )


def check(url: str, database_url: str, clickhouse_url: str, day: date, every: int) -> Any:
    """The day's push (nothing changed: it sends nothing) and the check; returns the check's
    evaluation and its step's wall seconds."""
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [stripe_meter_reports, meter_totals_match_warehouse],
        partition_key=day.isoformat(),
        instance=instance,
        resources={
            "billing_db": BillingDatabase(url=database_url),
            "stripe": StripeResource(api_key=API_KEY, api_base=url, max_network_retries=0),
            "warehouse": UsageWarehouse(url=clickhouse_url),
        },
        run_config={
            "ops": {
                STEP: {"config": {"every_days": every, "settle_seconds": 1, "poll_seconds": 0.5}}
            },
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
    )
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK]
    stamps = {
        str(e.dagster_event_type): e.timestamp
        for e in instance.all_logs(result.run_id)
        if e.step_key == STEP and e.dagster_event_type is not None
    }
    seconds = stamps["DagsterEventType.STEP_SUCCESS"] - stamps["DagsterEventType.STEP_START"]
    return evaluation, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    # Past days whose subscriptions (created now) have no period boundary near them.
    last = datetime.now(UTC).date() - timedelta(days=3)
    days = [last - timedelta(days=n) for n in range(args.days - 1, -1, -1)]
    home = Path(tempfile.mkdtemp(prefix="bench-meter-check-"))
    env = services.up(home, with_stripe=False)
    database_url, clickhouse_url = env["DATABASE_URL"], env["CLICKHOUSE_URL"]
    state = SandboxState(seed=17)
    free = run_in_thread(port=0, state=state, rate_limit=None, endpoint_rate_limit=None)
    limited = run_in_thread(port=0, state=state)  # test mode: 25/s account and per endpoint

    def summaries() -> int:
        return sum(n for p, n in limited.app.state.paths.items() if p.endswith("/event_summaries"))

    try:
        started = time.perf_counter()
        setup(free.url, database_url, clickhouse_url, args.tenants, days)
        print(
            f"setup: {args.tenants} tenants x {len(days)} days in "
            f"{time.perf_counter() - started:.1f}s (not timed)"
        )
        print(
            f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        print("\n| day | every_days | passed | tenants read | summaries requests | seconds |")
        print("|---|---|---|---|---|---|")
        runs = [(d, 7) for d in days] + [(days[-1], 1)]
        totals: dict[int, tuple[int, float, int]] = {}
        for day, every in runs:
            time.sleep(1.1)  # let the sandbox's bucket fill, as an idle account's would
            before = summaries()
            evaluation, seconds = check(limited.url, database_url, clickhouse_url, day, every)
            made = summaries() - before
            n, s, runs_of = totals.get(every, (0, 0.0, 0))
            totals[every] = (n + made, s + seconds, runs_of + 1)
            print(
                f"| {day} | {every} | {evaluation.passed} | "
                f"{evaluation.metadata['tenants_read'].value} | {made} | {seconds:.1f} |",
                flush=True,
            )
        for every, (n, s, k) in sorted(totals.items()):
            print(f"every_days={every}: {n / k:.1f} requests and {s / k:.1f} s per day ({k} days)")
        print(f"load average {os.getloadavg()[0]:.2f} at end")
    finally:
        free.stop()
        limited.stop()
        services.down(home)


if __name__ == "__main__":
    main()
