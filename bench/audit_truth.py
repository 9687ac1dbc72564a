"""The usage audit's truth by timestamps: one warehouse query per line against every line at once.

A month of generated usage for N tenants goes into a fresh chDB bridge (the embedded warehouse the
demo uses). Every tenant has one invoice line per period; periods start at a random instant of
the month's first day (so each line also counts its boundary days' parts) and last a month. Then:

- baseline: `period_truth` line by line (one query per line and boundary part), as the audit
  read it before;
- batched: `period_truths`, every line at once in slices of tenants, as the audit reads it now;
- a bare round trip (`SELECT 1`), the bridge's fixed cost per query.

Both answers must be equal line for line; the ratio is the baseline's time over the batched
time in the same run. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from billing_sandbox.clickhouse_bridge import spawn_bridge
from billing_sandbox.usage_generator import generate_usage

from billing_pipelines.lib.reconciliation.period_truths import period_truths
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.lib.usage.periods import period_truth


def main() -> None:
    """Time both ways to read the truth, for each tenant count asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--events-per-tenant-day", type=float, default=2_000.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    start = date(2026, 10, 1)
    print(f"load average before: {os.getloadavg()}")
    rows = []
    for tenants in args.tenants:
        folder = Path(tempfile.mkdtemp(prefix="bench-audit-truth-"))
        proc, port = spawn_bridge(folder / "data")
        try:
            client = warehouse.connect(f"http://default@127.0.0.1:{port}/default")
            warehouse.ensure_usage_schema(client)
            names = [f"t{i:05d}" for i in range(tenants)]
            rate = args.events_per_tenant_day
            summary = generate_usage(
                client,
                names,
                start,
                32,
                seed=args.seed,
                events_per_tenant_day=dict.fromkeys(names, rate),
            )
            rng = random.Random(args.seed)
            midnight = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
            periods = []
            for name in names:
                begin = midnight + timedelta(seconds=rng.randrange(86_400))
                periods.append((name, begin, begin + timedelta(days=31)))
            client.query("SELECT 1")
            mark = time.perf_counter()
            for _ in range(20):
                client.query("SELECT 1")
            round_trip = (time.perf_counter() - mark) / 20
            mark = time.perf_counter()
            one_by_one = {p: period_truth(client, *p) for p in periods}
            baseline = time.perf_counter() - mark
            mark = time.perf_counter()
            at_once = period_truths(client, periods)
            batched = time.perf_counter() - mark
            if any(at_once[p] != one_by_one[p] for p in periods):
                raise SystemExit(f"{tenants} tenants: the two reads disagree")
            rows.append(
                (tenants, summary.rows_inserted, round_trip, baseline, batched, os.getloadavg()[0])
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            shutil.rmtree(folder, ignore_errors=True)
    print()
    print(
        "| tenants (lines) | usage events | SELECT 1 round trip | line by line (baseline) "
        "| every line at once | × faster | load |"
    )
    print("|---|---|---|---|---|---|---|")
    for tenants, events, round_trip, baseline, batched, load in rows:
        print(
            f"| {tenants} | {events:,} | {round_trip * 1000:.1f} ms | {baseline:.1f} s "
            f"| {batched:.1f} s | {baseline / batched:.2f} | {load:.1f} |"
        )


if __name__ == "__main__":
    main()
