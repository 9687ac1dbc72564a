"""Benchmark: the sandbox's requests/s with a year of history, due-work index against the scan.

Reproduce: `python bench/sandbox_due_work.py --subscriptions 10000 --months 12`.

One in-process sandbox holds N customers with a card and one monthly subscription each (made
through its own request handling, without a test clock) and one paid invoice per past month for
each (`--months`), about N x (months + 1) invoices; set-up is not timed. Before each request
the sandbox runs the lifecycle work that has fallen due on real time (at most once a second);
finding it either walks the due-work index (`index`, today) or scans every subscription and
invoice ever made (`scan`, as before). Rows alternate (scan, index, scan, index) in the same
process on the same state, each `--seconds` long, issuing `GET /v1/subscriptions/{id}`; the
load average is printed with each. A look-up on its own is also timed (median of 21).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from typing import Any
from urllib.parse import urlencode

from billing_sandbox.stripe import app as sandbox_app
from billing_sandbox.stripe import billing_engine
from billing_sandbox.stripe.store import SandboxState

KEY = "sk_test_bench_due_work"
DAY = 86400
MONTH = 31 * DAY


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.2f}"


def build(n: int, months: int) -> tuple[SandboxState, list[str]]:
    """N subscriptions made a year ago and a paid invoice per past month for each."""
    st = SandboxState(seed=1)
    st.time_offset = -(months * MONTH + 5 * DAY)
    seq = {"n": 0}

    def call(method: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        seq["n"] += 1
        status, body, _ = sandbox_app._dispatch(
            st, method, path, urlencode(params), None, KEY, f"req_d{seq['n']}"
        )
        assert status == 200, body
        return body

    prod = call("POST", "/v1/products", {"name": "Pro"})["id"]
    price = call(
        "POST",
        "/v1/prices",
        {
            "product": prod,
            "currency": "usd",
            "unit_amount": "4900",
            "recurring[interval]": "month",
        },
    )["id"]
    subs = []
    for i in range(n):
        cus = call("POST", "/v1/customers", {"email": f"due-{i}@bench.example"})["id"]
        pm = call("POST", "/v1/payment_methods/pm_card_visa/attach", {"customer": cus})["id"]
        sub = call(
            "POST",
            "/v1/subscriptions",
            {"customer": cus, "items[0][price]": price, "default_payment_method": pm},
        )
        subs.append(sub["id"])
    with st.lock:
        for sub in st.all("subscription"):
            first = st.table("invoice")[sub["latest_invoice"]]
            for k in range(1, months + 1):
                inv = dict(first)
                inv["id"] = st.new_id("in")
                inv["created"] = int(sub["created"]) + k * MONTH
                inv["billing_reason"] = "subscription_cycle"
                st.put(inv)
            now = int(sub["created"]) + months * MONTH + 5 * DAY
            billing_engine.set_period(sub, now - 5 * DAY, now - 5 * DAY + MONTH)
            st.due.touch(sub["id"])  # changed directly, not through a request
        st.time_offset = 0.0
    return st, subs


_TICKS = {"n": 0, "seconds": 0.0}
_tick = sandbox_app._tick_real_time


def _timed_tick(st: SandboxState) -> None:
    """The real-time tick each request runs first, counted when it searches for due work."""
    before = getattr(st, "_last_tick", None)
    t = time.perf_counter()
    _tick(st)
    if getattr(st, "_last_tick", None) != before:
        _TICKS["n"] += 1
        _TICKS["seconds"] += time.perf_counter() - t


def requests_per_second(st: SandboxState, subs: list[str], seconds: float) -> float:
    """Requests answered per second over `seconds`, one retrieval after another."""
    done = 0
    _TICKS.update(n=0, seconds=0.0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        sub = subs[done % len(subs)]
        status, _, _ = sandbox_app._dispatch(
            st, "GET", f"/v1/subscriptions/{sub}", "", None, KEY, f"req_r{done}"
        )
        assert status == 200
        done += 1
    return done / (time.perf_counter() - start)


def lookup_ms(st: SandboxState, finder: Any) -> float:
    """Median milliseconds of one search for the next due action on real time."""
    times = []
    for _ in range(21):
        t = time.perf_counter()
        with st.lock:
            finder(st, None)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} vCPU, {_load()}", flush=True)
    t0 = time.perf_counter()
    st, subs = build(args.subscriptions, args.months)
    invoices = len(st.table("invoice"))
    print(
        f"setup: {len(subs):,} subscriptions, {invoices:,} invoices "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    # The account's objects live for the whole run: keep the collector from walking them
    # (a full collection over millions of dicts would land in whichever row it falls in).
    gc.collect()
    gc.freeze()
    sandbox_app._tick_real_time = _timed_tick
    index_finder = billing_engine.next_action
    scan_finder = billing_engine.scan_next_action
    found = index_finder(st, None)
    assert (found and found[2]["id"]) == ((scanned := scan_finder(st, None)) and scanned[2]["id"])
    rows = []
    for name, finder in (("scan", scan_finder), ("index", index_finder)) * 2:
        billing_engine.next_action = finder  # what each request's real-time tick calls
        before = _load()
        rate = requests_per_second(st, subs, args.seconds)
        ticks = f"{_TICKS['n']} ticks, {_TICKS['seconds']:.1f} s"
        rows.append((name, rate, ticks, lookup_ms(st, finder), f"{before} -> {_load()}"))
        print(f"{name}: {rate:.0f} requests/s ({ticks})", flush=True)
    billing_engine.next_action = index_finder
    print("\n| due work found by | requests/s | ticks, time in them | one look-up | load |")
    print("|---|---|---|---|---|")
    for name, rate, ticks, ms, load in rows:
        print(f"| {name} | {rate:.0f} | {ticks} | {ms:.2f} ms | {load} |")
    scan = statistics.mean(r[1] for r in rows if r[0] == "scan")
    index = statistics.mean(r[1] for r in rows if r[0] == "index")
    print(f"\nindex / scan requests/s: {index / scan:.2f}x; {_load()} at end")


if __name__ == "__main__":
    main()
