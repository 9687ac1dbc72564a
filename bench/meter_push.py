"""Benchmark: pushing one day of usage for N tenants to Stripe meters at a limit of R requests/s.

Reproduce: `python bench/meter_push.py --tenants 2000 --rate 25 --rate 100`; for the growth with
size, `--tenants 250 --tenants 500 --tenants 1000 --tenants 2000 --rate 100` (one setup of the
largest size; each size pushes its own day, holding usage for the first N tenants only).

Starts embedded PostgreSQL under a temporary BILLING_HOME and the Stripe sandbox in a separate
process (as `billing sandbox up` runs it), so server and client do not share one interpreter.
Setup (not timed): the plan catalog, N customers with a pro subscription each (through an
unlimited sandbox server), the tenant rows and one day of stored usage. Then, per rate R, a
second sandbox server over the *same* state enforces R requests/s (429 above it) and two
approaches push the same day:

- `stripe_meter_reports`: the Dagster asset itself (`dg.materialize`, ledger row before each
  call, paced concurrent push, retries) at `requests_per_second = R`. Timed from start to end
  of the materialization, Dagster overhead included.
- the naive approach: sequential, one subscription lookup per tenant
  (`Subscription.retrieve`, find the metered item) and then the report (a meter event: usage
  records no longer exist), retrying a 429 after 1 s (a naive script would log and drop it).

Target: ours <= 1.15 x (events / R) + 2 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
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
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.stripe.catalog import sync_catalog

API_KEY = "sk_test_bench_meter_push"


def _client(url: str) -> stripe.StripeClient:
    return stripe.StripeClient(api_key=API_KEY, base_addresses={"api": url}, max_network_retries=0)


def setup(
    url: str, database_url: str, tenants: int, days: list[tuple[date, int]]
) -> list[tuple[str, str, str]]:
    """Catalog, customers, subscriptions, tenant rows, and usage of the first n tenants per day."""
    client = _client(url)
    sync_catalog(client, load_catalog())
    prices = client.v1.prices.list(
        {"lookup_keys": ["pro_base_monthly", "pro_queries_overage_monthly"]}
    ).data

    def one(i: int) -> tuple[str, str, str]:
        cus = client.v1.customers.create({"metadata": {"tenant_id": f"bench-{i:05d}"}})
        sub = client.v1.subscriptions.create(
            {
                "customer": cus.id,
                "items": [{"price": p.id} for p in prices],
                "trial_period_days": 14,
            }
        )
        return f"bench-{i:05d}", cus.id, sub.id

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(one, range(tenants)))
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM usage_report_ledger WHERE tenant_id LIKE 'bench-%'")
        cur.execute("DELETE FROM daily_tenant_usage WHERE tenant_id LIKE 'bench-%'")
        cur.execute("DELETE FROM tenants WHERE tenant_id LIKE 'bench-%'")
        cur.executemany(
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id, "
            "stripe_subscription_id, billing_status) VALUES (%s, %s, %s, 'pro', %s, %s, 'active')",
            [(t, t, f"{t}@example.com", c, s) for t, c, s in rows],
        )
        cur.executemany(
            "INSERT INTO daily_tenant_usage (usage_date, tenant_id, billable_queries, tokens, "
            "embeddings, raw_events, duplicate_events) VALUES (%s, %s, %s, 0, 0, %s, 0)",
            [(d, t, 1000 + i, 1000 + i) for d, n in days for i, (t, _, _) in enumerate(rows[:n])],
        )
    return rows


def ours(url: str, database_url: str, day: date, rate: float) -> tuple[float, dict[str, Any]]:
    """The stripe_meter_reports asset, end to end, with the process's Stripe budget set to R."""
    # The process-wide Stripe budget defaults to 80 % of test mode's 25/s; here the account is
    # the limited server, so the budget is R, as `requests_per_second` is.
    os.environ["STRIPE_REQUESTS_PER_SECOND"] = str(rate)
    os.environ["STRIPE_ENDPOINT_REQUESTS_PER_SECOND"] = str(rate)
    started = time.perf_counter()
    result = dg.materialize(
        [stripe_meter_reports],
        partition_key=day.isoformat(),
        resources={
            "billing_db": BillingDatabase(url=database_url),
            "stripe": StripeResource(api_key=API_KEY, api_base=url, max_network_retries=0),
            # Opened only for a day that a period boundary splits; none here (steady state).
            "warehouse": UsageWarehouse(url="http://127.0.0.1:9/unused"),
        },
        run_config={
            "ops": {
                "stripe_meter_reports": {"config": {"requests_per_second": rate, "workers": 8}}
            },
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
    )
    elapsed = time.perf_counter() - started
    (mat,) = result.asset_materializations_for_node("stripe_meter_reports")
    return elapsed, {k: v.value for k, v in mat.metadata.items()}


def naive_push(url: str, rows: list[tuple[str, str, str]], day: date) -> tuple[float, int]:
    """Sequential, one subscription lookup per tenant, then the report; 429 -> sleep 1 s."""
    client = _client(url)
    timestamp = int(datetime.combine(day, datetime.min.time(), UTC).timestamp()) + 3600
    rate_limited = 0

    def call(fn: Any, *args: Any) -> Any:
        nonlocal rate_limited
        while True:
            try:
                return fn(*args)
            except stripe.RateLimitError:
                rate_limited += 1
                time.sleep(1)

    started = time.perf_counter()
    for i, (tenant, customer, subscription_id) in enumerate(rows):
        sub = call(client.v1.subscriptions.retrieve, subscription_id)
        item = next(it for it in sub["items"].data if it.price.recurring.usage_type == "metered")
        assert item.id
        call(
            client.v1.billing.meter_events.create,
            {
                "event_name": "rag_api_queries",
                "identifier": f"naive-{day}-{tenant}-{time.time_ns()}",
                "timestamp": timestamp,
                "payload": {"stripe_customer_id": customer, "value": str(1000 + i)},
            },
        )
    return time.perf_counter() - started, rate_limited


def _serve(ports: dict[str, int], rates: list[float], seed: int) -> None:
    """Sandbox process: one unlimited server and one per rate, all over the same state."""
    state = SandboxState(seed=seed)
    handles = [
        run_in_thread(port=ports["free"], state=state, rate_limit=None, endpoint_rate_limit=None)
    ]
    # Each limited server enforces R for the account and per endpoint (the meter events endpoint
    # is the one that matters here).
    handles += [
        run_in_thread(port=ports[str(r)], state=state, rate_limit=r, endpoint_rate_limit=r)
        for r in rates
    ]
    while True:
        time.sleep(3600)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _client(url).v1.billing.meters.list()
            return
        except stripe.APIConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, action="append", help="size(s), default 2000")
    parser.add_argument("--rate", type=float, action="append", help="sandbox limit, req/s")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    rates = args.rate or [25.0, 100.0]
    sizes = args.tenants or [2000]
    day = datetime.now(UTC).date() - timedelta(days=1)
    home = Path(tempfile.mkdtemp(prefix="bench-meter-push-"))
    env = services.up(home, with_clickhouse=False, with_stripe=False)
    database_url = env["DATABASE_URL"]
    import multiprocessing

    ports = {"free": _free_port(), **{str(r): _free_port() for r in rates}}
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(ports, rates, 11), daemon=True
    )
    server.start()
    free_url = f"http://127.0.0.1:{ports['free']}"
    table = []
    try:
        _wait_up(free_url)
        t = time.perf_counter()
        # A day per (rate, size): every measured push sends new identifiers (none already
        # delivered), and a day holds usage for exactly the tenants of its size.
        cases = [(rate, n) for rate in rates for n in sizes]
        days = [(day - timedelta(days=i), n) for i, (_, n) in enumerate(cases)]
        rows = setup(free_url, database_url, max(sizes), days)
        print(f"setup: {len(rows)} tenants in {time.perf_counter() - t:.1f}s (not timed)")
        print(
            f"python {platform.python_version()}, {platform.machine()}, day {day}, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        for (rate, n), (day, _) in zip(cases, days, strict=True):
            url = f"http://127.0.0.1:{ports[str(rate)]}"
            time.sleep(1.1)  # let the sandbox's bucket fill, as an idle account's would
            events = n
            budget = 1.15 * events / rate + 2
            elapsed, meta = ours(url, database_url, day, rate)
            assert meta["sent"] == events, meta
            print(
                f"R={rate:g}/s events={events}: stripe_meter_reports {elapsed:.1f}s "
                f"(ideal {events / rate:.1f}s, budget {budget:.1f}s, "
                f"{'OK' if elapsed <= budget else 'OVER'}), sent={meta['sent']}, "
                f"push {meta['push_seconds']}s, retried {meta['retried_requests']}",
                flush=True,
            )
            base, limited_count = float("nan"), 0
            if not args.skip_baseline:
                time.sleep(1.1)
                base, limited_count = naive_push(url, rows[:n], day)
                print(
                    f"R={rate:g}/s events={events}: naive {base:.1f}s "
                    f"({2 * events} requests, {limited_count} answered 429), "
                    f"{base / elapsed:.1f}x slower",
                    flush=True,
                )
            table.append((rate, events, elapsed, meta, base, limited_count))
        print(
            "\n| R (req/s) | events | ideal events/R | stripe_meter_reports (push alone) | "
            "events/s as a fraction of R | naive | naive / ours |"
        )
        print("|---|---|---|---|---|---|---|")
        for rate, events, elapsed, meta, base, _ in table:
            print(
                f"| {rate:g} | {events:,} | {events / rate:.1f} s | {elapsed:.1f} s "
                f"({meta['push_seconds']} s) | {events / elapsed / rate:.2f} | {base:.1f} s | "
                f"{base / elapsed:.1f}x |"
            )
        print(f"load average {os.getloadavg()[0]:.2f} at end")
    finally:
        server.kill()  # the process this benchmark started, by its handle
        server.join()
        services.down(home)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
