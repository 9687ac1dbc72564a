"""Benchmark: snapshot + diff of N Stripe subscriptions against the sandbox.

Reproduce: `python bench/reconciliation_snapshot.py --subscriptions 10000`; for the growth with
size, `--subscriptions 1000 --subscriptions 3000 --subscriptions 10000` measures each size in
turn on one sandbox, creating only the additional tenants before each measurement.

Starts embedded PostgreSQL and the Stripe sandbox as separate processes (`billing sandbox up`
under a temporary BILLING_HOME), creates N customers with one subscription each through the
official SDK (a mix of active, trialing and incomplete; 1 % then cancelled directly in Stripe),
the matching tenant rows, then measures the reconciliation path exactly as the assets run it:
`stripe_snapshots.fetch_state` (auto-paged, latest invoice expanded) + `store_state` (COPY),
then `load_snapshot` + `reconciliation.diff` + `store_findings`; and separately the invoice
snapshot. Wall time is from a plain run; peak memory (Python heap, tracemalloc) from a second,
identical run. Setup is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import stripe
from billing_sandbox import services
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.reconciliation import diff as reconciliation
from billing_pipelines.lib.reconciliation import snapshots as snapshot_store
from billing_pipelines.lib.stripe import snapshots as stripe_snapshots
from billing_pipelines.lib.stripe.catalog import sync_catalog


def create_tenants(
    client: stripe.StripeClient, db_url: str, first: int, n: int, workers: int
) -> list[str]:
    """Tenants first .. n-1 (customer, subscription, tenant row); returns those cancelled."""
    prices = {
        plan: [
            p.id
            for p in client.v1.prices.list(
                {"lookup_keys": [f"{plan}_base_monthly", f"{plan}_queries_overage_monthly"]}
            ).data
        ]
        for plan in ("starter", "pro", "enterprise")
    }

    def one(i: int) -> tuple[str, str, str, str, str]:
        tenant_id = f"bench-{i:06d}"
        plan = ("starter", "pro", "enterprise")[i % 3]
        customer = client.v1.customers.create(
            {"email": f"{tenant_id}@bench.example", "metadata": {"tenant_id": tenant_id}}
        )
        params: dict[str, Any] = {
            "customer": customer.id,
            "items": [{"price": p} for p in prices[plan]],
        }
        if i % 10 < 7:
            pm = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
            params["default_payment_method"] = pm.id
        elif i % 10 < 9:
            params["trial_period_days"] = 14
        else:
            params["payment_behavior"] = "default_incomplete"
        sub = client.v1.subscriptions.create(params)  # type: ignore[arg-type]
        return tenant_id, plan, customer.id, sub.id, sub.status

    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, range(first, n)))
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY tenants (tenant_id, name, email, plan, stripe_customer_id, "
            "stripe_subscription_id, billing_status, subscription_status, api_access_enabled) "
            "FROM STDIN"
        ) as copy:
            for tenant_id, plan, customer, sub, status in rows:
                # An incomplete subscription never got its first payment: no access yet.
                access = status != "incomplete"
                copy.write_row(
                    (
                        tenant_id,
                        tenant_id,
                        f"{tenant_id}@x",
                        plan,
                        customer,
                        sub,
                        status,
                        status,
                        access,
                    )
                )
    cancelled = [sub for (_, _, _, sub, status) in rows[::100] if status != "incomplete"]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(client.v1.subscriptions.cancel, cancelled))
    return cancelled


def snapshot_and_diff(client: stripe.StripeClient, db_url: str) -> dict[str, Any]:
    plans = set(load_catalog().plans)
    t0 = time.perf_counter()
    taken_at = datetime.now(UTC)
    state = stripe_snapshots.fetch_state(client, plans)
    t1 = time.perf_counter()
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        snapshot_store.store_state(conn, taken_at.date(), state, taken_at)
    t2 = time.perf_counter()
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        day, as_of, tenants, subs, customers, invoices = reconciliation.load_snapshot(conn)
        result = reconciliation.diff(tenants, subs, customers, invoices, as_of=as_of)
        reconciliation.store_findings(conn, day, result.findings)
    t3 = time.perf_counter()
    return {
        "subscriptions": len(state.subscriptions),
        "customers": len(state.customers),
        "findings": len(result.findings),
        "leaks": sum(f.revenue_leak for f in result.findings),
        "fetch_s": t1 - t0,
        "store_s": t2 - t1,
        "diff_s": t3 - t2,
        "total_s": t3 - t0,
    }


def invoice_snapshot(client: stripe.StripeClient, db_url: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    taken_at = datetime.now(UTC)
    snap = stripe_snapshots.fetch_invoices(client)
    with psycopg.connect(db_url) as conn:
        snapshot_store.store_invoices(conn, taken_at.date(), snap, taken_at)
    return {
        "invoices": len(snap.invoices),
        "lines": len(snap.lines),
        "total_s": time.perf_counter() - t0,
    }


def peak_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--subscriptions", type=int, action="append", help="size(s), measured in increasing order"
    )
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    sizes = sorted(args.subscriptions or [10_000])
    home = Path(tempfile.mkdtemp(prefix="bench_reconciliation_"))
    env = services.up(home, with_clickhouse=False)
    print(
        f"python {platform.python_version()}, {platform.machine()}, {sys.platform}, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    table = []
    try:
        db_url = env["DATABASE_URL"]
        client = stripe.StripeClient(
            api_key=env["STRIPE_API_KEY"],
            base_addresses={"api": env["STRIPE_API_BASE"]},
            max_network_retries=2,
        )
        sync_catalog(client, load_catalog())
        cancelled: list[str] = []
        created = 0
        for size in sizes:
            t0 = time.perf_counter()
            cancelled += create_tenants(client, db_url, created, size, args.workers)
            print(
                f"\nsetup: {size - created} more customers + subscriptions (now {size}) in "
                f"{time.perf_counter() - t0:.0f} s, {len(cancelled)} cancelled directly in Stripe"
            )
            created = size
            timed = snapshot_and_diff(client, db_url)
            assert timed["subscriptions"] == size, timed
            assert timed["leaks"] == len(cancelled), timed
            peak = peak_mib(lambda: snapshot_and_diff(client, db_url))
            invoices = invoice_snapshot(client, db_url)
            invoice_peak = peak_mib(lambda: invoice_snapshot(client, db_url))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"subscription snapshot + diff: {timed['subscriptions']} subscriptions, "
                f"{timed['customers']} customers -> {timed['findings']} findings "
                f"({timed['leaks']} revenue leaks)"
            )
            print(
                f"  time {timed['total_s']:.2f} s (fetch {timed['fetch_s']:.2f} s, store "
                f"{timed['store_s']:.2f} s, load + diff + store findings {timed['diff_s']:.2f} s)"
            )
            print(f"  peak Python heap {peak:.1f} MiB (tracemalloc, second run)")
            print(
                f"invoice snapshot: {invoices['invoices']} invoices, {invoices['lines']} lines in "
                f"{invoices['total_s']:.2f} s, peak heap {invoice_peak:.1f} MiB"
            )
            print(f"process max RSS so far {rss:.0f} MiB (setup included)", flush=True)
            table.append((size, timed, peak, invoices, invoice_peak))
    finally:
        services.down(home)
    print(
        "\n| subscriptions | fetch | store | load + diff + store findings | total | "
        "per 1,000 | peak heap | invoice snapshot |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size, timed, peak, invoices, invoice_peak in table:
        print(
            f"| {size:,} | {timed['fetch_s']:.1f} s | {timed['store_s']:.1f} s | "
            f"{timed['diff_s']:.1f} s | {timed['total_s']:.1f} s | "
            f"{timed['total_s'] / size * 1000:.1f} s | {peak:.1f} MiB | "
            f"{invoices['total_s']:.1f} s, {invoice_peak:.1f} MiB |"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
