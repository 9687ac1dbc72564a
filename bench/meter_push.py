"""Benchmark: pushing one day of usage for N tenants to Stripe meters at a limit of R requests/s.

Reproduce: `python bench/meter_push.py --tenants 2000 --rate 25 --rate 100`; for the growth with
size, `--tenants 250 --tenants 500 --tenants 1000 --tenants 2000 --rate 100` (one setup of the
largest size; each size pushes its own day, holding usage for the first N tenants only).
At live limits: `python bench/meter_push.py --tenants 5000 --meter-rate 1000 --workers 32`
(meter events limited apart at 1,000/s, everything else at the account's 100/s and 25/s per
endpoint, as Stripe limits a live account). One process against two, alternating, push alone
as a fraction of the limit: `python bench/meter_push.py --tenants 5000 --meter-rate 1000
--workers 32 --shards 1 --shards 2 --repeat 2 --skip-baseline` (`--shards N`: the push's
processes, each with 1/N of the rate, the workers and the Stripe budgets).

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

With `--rate R` the limited server counts every request against R for the account and R per
endpoint (test mode's rule: meter events count toward the basic limit). With `--meter-rate M`
it limits like a live account: meter events at M in their own bucket, every other request at
`--account-rate` (100) and `--endpoint-rate` (25); the push's budget is set the same way
(`STRIPE_METER_EVENTS_PER_SECOND`). Each push also reports the CPU time per meter event of this
process and its push shards (the client: Dagster, ledger, SDK, transport) and of the sandbox's
process, to show which side a ceiling comes from.

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
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import stripe
from billing_sandbox import services
from billing_sandbox.ports import free_port
from billing_sandbox.stripe import SandboxState, run_in_thread

from billing_pipelines.defs.metering.assets import stripe_meter_reports
from billing_pipelines.defs.resources import BillingDatabase, StripeResource, UsageWarehouse
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.stripe.catalog import sync_catalog

API_KEY = "sk_test_bench_meter_push"


@dataclass(frozen=True)
class Limits:
    """What one limited sandbox server enforces, requests/s; meter None: test mode's rule."""

    account: float
    endpoint: float
    meter: float | None = None

    @property
    def push_rate(self) -> float:
        """The limit the push's meter events run against."""
        return self.meter or self.account

    @property
    def label(self) -> str:
        if self.meter is None:
            return f"R={self.account:g}/s"
        return f"meter {self.meter:g}/s, account {self.account:g}/s, endpoint {self.endpoint:g}/s"


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), with `children` those of
    its children that ended and were waited for (a sharded push's processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


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


def ours(
    url: str, database_url: str, day: date, limits: Limits, workers: int, shards: int
) -> tuple[float, dict[str, Any]]:
    """The stripe_meter_reports asset, end to end, with the process's Stripe budget set to the
    server's limits."""
    # The process-wide Stripe budget defaults to 80 % of test mode's 25/s; here the account is
    # the limited server, so the budget is its limits, as `requests_per_second` is.
    rate = limits.push_rate
    os.environ["STRIPE_REQUESTS_PER_SECOND"] = str(limits.account)
    os.environ["STRIPE_ENDPOINT_REQUESTS_PER_SECOND"] = str(limits.endpoint)
    if limits.meter is None:
        os.environ.pop("STRIPE_METER_EVENTS_PER_SECOND", None)
    else:
        os.environ["STRIPE_METER_EVENTS_PER_SECOND"] = str(limits.meter)
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
                "stripe_meter_reports": {
                    "config": {
                        "requests_per_second": rate,
                        "workers": workers,
                        "shards": shards,
                    }
                }
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


def _serve(ports: dict[str, int], cases: list[Limits], seed: int) -> None:
    """Sandbox process: one unlimited server and one per set of limits, over the same state."""
    state = SandboxState(seed=seed)
    handles = [
        run_in_thread(port=ports["free"], state=state, rate_limit=None, endpoint_rate_limit=None)
    ]
    handles += [
        run_in_thread(
            port=ports[limits.label],
            state=state,
            rate_limit=limits.account,
            endpoint_rate_limit=limits.endpoint,
            meter_events_rate_limit=limits.meter,
        )
        for limits in cases
    ]
    while True:
        time.sleep(3600)


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 180  # a loaded host takes a while to start the sandbox
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
    parser.add_argument(
        "--rate", type=float, action="append", help="test-mode limit R for every request, req/s"
    )
    parser.add_argument(
        "--meter-rate",
        type=float,
        action="append",
        help="live-mode limit for meter events alone, req/s (others: --account-rate)",
    )
    parser.add_argument("--account-rate", type=float, default=100.0, help="live account, req/s")
    parser.add_argument("--endpoint-rate", type=float, default=25.0, help="per endpoint, req/s")
    parser.add_argument(
        "--workers", type=int, default=8, help="the push's worker threads (split among shards)"
    )
    parser.add_argument(
        "--shards",
        type=int,
        action="append",
        help="processes of the push (repeat to compare, e.g. --shards 1 --shards 2), default 1",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the shard counts this many times, alternating"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    limits = [Limits(r, r) for r in args.rate or []]
    limits += [Limits(args.account_rate, args.endpoint_rate, m) for m in args.meter_rate or []]
    limits = limits or [Limits(25.0, 25.0), Limits(100.0, 100.0)]
    sizes = args.tenants or [2000]
    day = datetime.now(UTC).date() - timedelta(days=1)
    home = Path(tempfile.mkdtemp(prefix="bench-meter-push-"))
    env = services.up(home, with_clickhouse=False, with_stripe=False)
    database_url = env["DATABASE_URL"]
    import multiprocessing

    ports = {"free": free_port(), **{lim.label: free_port() for lim in limits}}
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(ports, limits, 11), daemon=True
    )
    server.start()
    assert server.pid is not None
    free_url = f"http://127.0.0.1:{ports['free']}"
    table = []
    try:
        _wait_up(free_url)
        t = time.perf_counter()
        # A day per (limits, size): every measured push sends new identifiers (none already
        # delivered), and a day holds usage for exactly the tenants of its size.
        shard_counts = args.shards or [1]
        cases = [
            (lim, n, k)
            for lim in limits
            for n in sizes
            for _ in range(args.repeat)
            for k in shard_counts
        ]
        days = [(day - timedelta(days=i), n) for i, (_, n, _) in enumerate(cases)]
        rows = setup(free_url, database_url, max(sizes), days)
        print(f"setup: {len(rows)} tenants in {time.perf_counter() - t:.1f}s (not timed)")
        print(
            f"python {platform.python_version()}, {platform.machine()}, day {day}, "
            f"{os.cpu_count()} CPUs, workers {args.workers}, "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        for (lim, n, shards), (day, _) in zip(cases, days, strict=True):
            url = f"http://127.0.0.1:{ports[lim.label]}"
            rate = lim.push_rate
            time.sleep(1.1)  # let the sandbox's bucket fill, as an idle account's would
            events = n
            budget = 1.15 * events / rate + 2
            load_before = os.getloadavg()[0]
            cpu_client = _cpu_seconds(os.getpid(), children=True)
            cpu_server = _cpu_seconds(server.pid)
            elapsed, meta = ours(url, database_url, day, lim, args.workers, shards)
            load_after = os.getloadavg()[0]
            cpu_client = _cpu_seconds(os.getpid(), children=True) - cpu_client
            cpu_server = _cpu_seconds(server.pid) - cpu_server
            assert meta["sent"] == events, meta
            assert meta["shards"] == shards, meta
            print(
                f"{lim.label} events={events} shards={shards}: stripe_meter_reports {elapsed:.1f}s "
                f"(ideal {events / rate:.1f}s, budget {budget:.1f}s, "
                f"{'OK' if elapsed <= budget else 'OVER'}), sent={meta['sent']}, "
                f"push {meta['push_seconds']}s, retried {meta['retried_requests']}; CPU per "
                f"event: client {1000 * cpu_client / events:.2f} ms, sandbox "
                f"{1000 * cpu_server / events:.2f} ms; load average {load_before:.1f} "
                f"before, {load_after:.1f} after; push alone "
                f"{events / float(meta['push_seconds']) / rate:.2f} of the limit",
                flush=True,
            )
            base, limited_count = float("nan"), 0
            if not args.skip_baseline:
                time.sleep(1.1)
                base, limited_count = naive_push(url, rows[:n], day)
                print(
                    f"{lim.label} events={events}: naive {base:.1f}s "
                    f"({2 * events} requests, {limited_count} answered 429), "
                    f"{base / elapsed:.1f}x slower",
                    flush=True,
                )
            table.append(
                (lim, events, shards, elapsed, meta, base, cpu_client, cpu_server, load_before)
            )
        print(
            "\n| limits | events | shards | load average | ideal events/R | "
            "stripe_meter_reports (push alone) | events/s as a fraction of R: run (push alone) | "
            "CPU ms per event: client / sandbox | naive | naive / ours |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in table:
            lim, events, shards, elapsed, meta, base, cpu_client, cpu_server, load = row
            rate = lim.push_rate
            push = float(meta["push_seconds"])
            print(
                f"| {lim.label} | {events:,} | {shards} | {load:.1f} | {events / rate:.1f} s | "
                f"{elapsed:.1f} s ({push} s) | {events / elapsed / rate:.2f} "
                f"({events / push / rate:.2f}) | "
                f"{1000 * cpu_client / events:.2f} / {1000 * cpu_server / events:.2f} | "
                f"{base:.1f} s | {base / elapsed:.1f}x |"
            )
        print(f"load average {os.getloadavg()[0]:.2f} at end")
        for lim in limits:
            for n in sizes:
                alone = {
                    k: [
                        events / float(meta["push_seconds"]) / lim.push_rate
                        for (l2, events, k2, _, meta, *_rest) in table
                        if l2 == lim and events == n and k2 == k
                    ]
                    for k in shard_counts
                }
                print(
                    f"push alone as a fraction of {lim.label}, {n:,} events: "
                    + "; ".join(
                        f"{k} shard{'s' if k > 1 else ''} " + ", ".join(f"{r:.2f}" for r in ratios)
                        for k, ratios in alone.items()
                    )
                )
    finally:
        server.kill()  # the process this benchmark started, by its handle
        server.join()
        services.down(home)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
