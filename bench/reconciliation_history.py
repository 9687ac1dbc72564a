"""Benchmark: reconciling N subscriptions with a year of invoices, old path against new.

Reproduce: `python bench/reconciliation_history.py --subscriptions 10000 --months 12`.

One Stripe sandbox process holds N customers with one subscription each (made through the
sandbox's own request handling a year ago on its clock: 98 % active with a card, 2 % cancelled
since) and, for each live subscription, one paid invoice per past month (`--months`), so the
account holds about N x (months + 1) invoices. Setup is not timed. Embedded PostgreSQL holds the
matching tenant rows. Each measurement is one day of reconciliation's Stripe side plus the diff
that reads it (`load_snapshot` + `diff` + `store_findings`):

- **old path**: what the project did before incremental snapshots, on the sandbox's paging of
  before (each page rebuilt and scanned the whole list; switched on in the same process):
  `fetch_state` + `store_state`, `fetch_invoices` + `store_invoices` (every object, every day);
- **full pass**: the same listings on today's sandbox (O(page)), through
  `snapshot_passes` (what the weekly full pass costs);
- **incremental pass**: the next day, after 1 % new tenants and 0.5 % cancellations,
  through `snapshot_passes` (what every other day costs).

The three share the machine, the sandbox process and its state; the load average is printed
before and after each. The incremental day's snapshot is checked against counts the setup
knows, independently of the code under test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import stripe
from psycopg.rows import dict_row

from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.pg import migrations
from billing_pipelines.lib.reconciliation import diff as reconciliation
from billing_pipelines.lib.reconciliation import snapshot_passes
from billing_pipelines.lib.reconciliation import snapshots as snapshot_store
from billing_pipelines.lib.stripe import snapshots as stripe_snapshots
from billing_pipelines.lib.stripe.catalog import sync_catalog

KEY = "sk_test_bench_reconciliation_history"
DAY = 86400
MONTH = 31 * DAY


# ---- the sandbox process ------------------------------------------------------------------------


def _flatten(params: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            out += _flatten(value, name)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                out += _flatten(v, f"{name}[{i}]") if isinstance(v, dict) else [(f"{name}[{i}]", v)]
        else:
            out.append((name, str(value)))
    return out


def _serve(port: int, n: int, months: int, ready: Path) -> None:
    """Build the account in this process, then serve it; legacy paging switchable over HTTP."""
    from billing_sandbox.stripe import app as sandbox_app
    from billing_sandbox.stripe import paging
    from billing_sandbox.stripe.billing_engine import set_period
    from billing_sandbox.stripe.resources import billing, catalog, customers, subscriptions
    from billing_sandbox.stripe.server import run_in_thread
    from billing_sandbox.stripe.store import SandboxState
    from billing_sandbox.stripe.wire import list_object
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    legacy = {"on": False}

    def list_page(
        state: SandboxState,
        kind: str,
        url: str,
        params: dict[str, Any],
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        if not legacy["on"]:
            return paging.list_page(state, kind, url, params, match)
        # The paging of before: the whole filtered list built for every page, then sliced.
        lo, hi = paging.created_bounds(params.get("created"))
        items = [
            o
            for o in state.all(kind)
            if lo <= int(o.get("created") or 0) <= hi and (match is None or match(o))
        ]
        return list_object(items, url, params)

    for module in (billing, catalog, customers, subscriptions):
        module.list_page = list_page  # type: ignore[attr-defined]

    st = SandboxState(seed=1)
    st.time_offset = -(months * MONTH + 5 * DAY)  # the account was set up a year ago
    handle = run_in_thread(port=port, state=st, rate_limit=None, endpoint_rate_limit=None)

    async def switch(request: Request) -> JSONResponse:
        legacy["on"] = request.path_params["on"] == "1"
        return JSONResponse({"legacy": legacy["on"]})

    handle.app.router.routes.insert(0, Route("/_bench/legacy/{on}", switch, methods=["POST"]))
    client = stripe.StripeClient(api_key=KEY, base_addresses={"api": handle.url})
    sync_catalog(client, load_catalog())
    prices = {
        plan: [
            p.id
            for p in client.v1.prices.list(
                {"lookup_keys": [f"{plan}_base_monthly", f"{plan}_queries_overage_monthly"]}
            ).data
        ]
        for plan in ("starter", "pro", "enterprise")
    }
    seq = {"n": 0}

    def call(method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        seq["n"] += 1
        status, body, _ = sandbox_app._dispatch(
            st, method, path, urlencode(_flatten(params)), None, KEY, f"req_b{seq['n']}"
        )
        assert status == 200, body
        return body

    tenants = []
    for i in range(n):
        tenant_id = f"hist-{i:06d}"
        plan = ("starter", "pro", "enterprise")[i % 3]
        cus = call(
            "POST",
            "/v1/customers",
            {"email": f"{tenant_id}@bench.example", "metadata": {"tenant_id": tenant_id}},
        )
        pm = call("POST", "/v1/payment_methods/pm_card_visa/attach", {"customer": cus["id"]})
        sub = call(
            "POST",
            "/v1/subscriptions",
            {
                "customer": cus["id"],
                "items": [{"price": p} for p in prices[plan]],
                "default_payment_method": pm["id"],
            },
        )
        tenants.append([tenant_id, plan, cus["id"], sub["id"], sub["status"]])
    cancelled = list(tenants[::50])
    for t in cancelled:
        call("DELETE", f"/v1/subscriptions/{t[3]}", {})
    invoices = len(st.all("invoice"))
    # A year of paid monthly invoices per live subscription: the first invoice cloned (nested
    # parts that never change are shared, as a snapshot of them would be), inserted by
    # subscription, so the order made differs from the order created.
    with st.lock:
        for sub in st.all("subscription"):
            if sub["status"] != "active":
                continue
            first = st.table("invoice")[sub["latest_invoice"]]
            for k in range(1, months + 1):
                start = int(sub["created"]) + (k - 1) * MONTH
                inv = dict(first)
                inv["id"] = st.new_id("in")
                inv["created"] = start + MONTH
                inv["period_start"], inv["period_end"] = start, start + MONTH
                inv["billing_reason"] = "subscription_cycle"
                inv["status_transitions"] = {
                    **first["status_transitions"],
                    "finalized_at": start + MONTH + 3600,
                    "paid_at": start + MONTH + 3600,
                }
                lines = []
                for line in first["lines"]["data"]:
                    ln = dict(line)
                    ln["id"] = st.new_id("il")
                    ln["period"] = {"start": start, "end": start + MONTH}
                    lines.append(ln)
                inv["lines"] = {**first["lines"], "data": lines}
                st.put(inv)
                invoices += 1
            now = int(sub["created"]) + months * MONTH + 5 * DAY
            set_period(sub, now - 5 * DAY, now - 5 * DAY + MONTH)
            st.due.touch(sub["id"])  # changed directly, not through a request
        st.time_offset = 0.0
    ready.write_text(
        json.dumps(
            {"tenants": tenants, "cancelled": [t[3] for t in cancelled], "invoices": invoices}
        )
    )
    while True:
        time.sleep(3600)


# ---- the measuring process ----------------------------------------------------------------------


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def _transaction(db_url: str) -> Callable[[], Any]:
    @contextmanager
    def transaction() -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(db_url, row_factory=dict_row) as conn, conn.transaction():
            yield conn

    return transaction


def _diff(db_url: str) -> int:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        day, as_of, tenants, subs, customers, invoices = reconciliation.load_snapshot(conn)
        result = reconciliation.diff(tenants, subs, customers, invoices, as_of=as_of)
        reconciliation.store_findings(conn, day, result.findings)
    return sum(f.revenue_leak for f in result.findings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "READY_FILE"))
    args = parser.parse_args()
    if args.serve:
        _serve(int(args.serve[0]), args.subscriptions, args.months, Path(args.serve[1]))
        return

    from billing_sandbox import services

    home = Path(tempfile.mkdtemp(prefix="bench_history_"))
    ready = home / "ready.json"
    port = 12000 + os.getpid() % 1000
    print(
        f"python {platform.python_version()}, {os.cpu_count()} vCPU, {_load()} at start",
        flush=True,
    )
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--subscriptions",
            str(args.subscriptions),
            "--months",
            str(args.months),
            "--serve",
            str(port),
            str(ready),
        ]
    )
    try:
        env = services.up(home, with_clickhouse=False, with_stripe=False)
        db_url = env["DATABASE_URL"]
        migrations.upgrade_to_head(db_url)
        while not ready.exists():
            if server.poll() is not None:
                raise SystemExit("the sandbox process ended during setup")
            time.sleep(1)
        time.sleep(0.5)
        built = json.loads(ready.read_text())
        with psycopg.connect(db_url) as conn, conn.cursor() as cur:
            with cur.copy(
                "COPY tenants (tenant_id, name, email, plan, stripe_customer_id, "
                "stripe_subscription_id, billing_status, subscription_status, "
                "api_access_enabled) FROM STDIN"
            ) as cp:
                for tenant_id, plan, cus, sub, status in built["tenants"]:
                    cp.write_row(
                        (
                            tenant_id,
                            tenant_id,
                            f"{tenant_id}@x",
                            plan,
                            cus,
                            sub,
                            status,
                            status,
                            True,
                        )
                    )
        base = f"http://127.0.0.1:{port}"
        print(
            f"setup: {args.subscriptions:,} subscriptions ({len(built['cancelled'])} cancelled "
            f"in Stripe), {built['invoices']:,} invoices, in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        client = stripe.StripeClient(
            api_key=KEY, base_addresses={"api": base}, max_network_retries=2
        )
        plans = set(load_catalog().plans)
        transaction = _transaction(db_url)
        rows: list[tuple[str, float, float, float, str]] = []

        # Old path, old paging.
        httpx.post(f"{base}/_bench/legacy/1").raise_for_status()
        before = _load()
        t = time.perf_counter()
        taken = datetime(2026, 12, 1, 6, tzinfo=UTC)
        state = stripe_snapshots.fetch_state(client, plans)
        invoices = stripe_snapshots.fetch_invoices(client)
        fetched = time.perf_counter()
        with transaction() as conn:
            snapshot_store.store_state(conn, taken.date(), state, taken)
            snapshot_store.store_invoices(conn, taken.date(), invoices, taken)
        leaks = _diff(db_url)
        old = time.perf_counter() - t
        rows.append(
            (
                "old path (full listing, old sandbox paging)",
                old,
                fetched - t,
                leaks,
                f"{before} -> {_load()}",
            )
        )
        assert len(invoices.invoices) == built["invoices"], len(invoices.invoices)
        assert leaks == len(built["cancelled"]), leaks
        print(f"old path: {old:.1f} s ({len(invoices.invoices):,} invoices)", flush=True)
        httpx.post(f"{base}/_bench/legacy/0").raise_for_status()

        def new_pass(day: int, force: bool) -> tuple[float, float, int, dict[str, Any]]:
            taken = datetime(2026, 12, day, 6, tzinfo=UTC)
            t = time.perf_counter()
            subs = snapshot_passes.subscription_pass(
                transaction,
                client,
                plans,
                taken,
                int(time.time()),
                test_mode=True,
                force_full=force,
            )
            invs = snapshot_passes.invoice_pass(
                transaction, client, taken, int(time.time()), test_mode=True, force_full=force
            )
            fetched = time.perf_counter() - t
            leaks = _diff(db_url)
            with transaction() as conn:
                count = conn.execute(
                    "SELECT count(*) AS n FROM stripe_invoice_snapshots WHERE snapshot_date = %s",
                    (taken.date(),),
                ).fetchone()
            info = {
                "sub_pass": subs.record.mode,
                "inv_pass": invs.record.mode,
                "invoices": count["n"] if count else 0,
                "read": subs.record.objects_read + invs.record.objects_read,
                "carried": subs.record.carried + invs.record.carried,
            }
            return time.perf_counter() - t, fetched, leaks, info

        before = _load()
        full, full_fetch, leaks, info = new_pass(2, True)
        assert info["invoices"] == built["invoices"] and leaks == len(built["cancelled"])
        rows.append(
            (
                "full pass (weekly), O(page) sandbox",
                full,
                full_fetch,
                leaks,
                f"{before} -> {_load()}",
            )
        )
        print(f"full pass: {full:.1f} s {info}", flush=True)

        # A day of change: 1 % new tenants, 0.5 % cancelled.
        live = [t for t in built["tenants"] if t[3] not in set(built["cancelled"])]
        new_tenants = max(1, args.subscriptions // 100)
        price = client.v1.prices.list({"lookup_keys": ["pro_base_monthly"]}).data[0].id
        for i in range(new_tenants):
            cus = client.v1.customers.create({"email": f"new-{i}@bench.example"})
            pm = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
            client.v1.subscriptions.create(
                {"customer": cus.id, "items": [{"price": price}], "default_payment_method": pm.id}
            )
        cancels = live[1::200]
        for t_row in cancels:
            client.v1.subscriptions.cancel(t_row[3])
        # Each new subscription's first invoice, and each cancellation's final one if any.
        expected_invoices = (
            built["invoices"]
            + new_tenants
            + sum(
                1
                for t_row in cancels
                for _ in client.v1.invoices.list(
                    {"subscription": t_row[3], "created": {"gte": int(time.time()) - 3600}}
                ).data
            )
        )
        before = _load()
        inc, inc_fetch, leaks, info = new_pass(3, False)
        assert info["sub_pass"] == info["inv_pass"] == "incremental", info
        assert info["invoices"] == expected_invoices, (info, expected_invoices)
        assert leaks == len(built["cancelled"]) + len(cancels), leaks
        rows.append(
            (
                f"incremental pass ({new_tenants} new, {len(cancels)} cancelled)",
                inc,
                inc_fetch,
                leaks,
                f"{before} -> {_load()}",
            )
        )
        print(f"incremental pass: {inc:.1f} s {info}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        services.down(home)
    print("\n| path | Stripe side (fetch) | total with store + diff | leaks found | load |")
    print("|---|---|---|---|---|")
    for name, total, fetch, found, load in rows:
        print(f"| {name} | {fetch:.1f} s | {total:.1f} s | {found} | {load} |")
    print(
        f"\nold path / incremental: {old / inc:.1f}x; old path / full pass: {old / full:.1f}x; "
        f"{_load()} at end"
    )


if __name__ == "__main__":
    main()
