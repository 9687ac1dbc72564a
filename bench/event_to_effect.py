"""Benchmark: event-to-effect latency through the webhook queue sensor, p50/p95.

Reproduce: `python bench/event_to_effect.py --inprocess-samples 12 --daemon-samples 10`;
the daemon's shipped settings against the old ones, alternating in one run:
`python bench/event_to_effect.py --inprocess-samples 0 --daemon-samples 10 --settings both \
--rounds 2`

Embedded PostgreSQL under a temporary BILLING_HOME (billing database and Dagster's storage,
`dagster.yaml`), the Stripe sandbox and the webhook receiver in this process (threads,
loopback HTTP). Each sample is one customer: all samples' customers subscribe first and every
event of those signups is handled; then, one at a time, a cancellation in Stripe is timed until
the tenant row says `canceled`:

Stripe -> webhook delivery -> receiver INSERT (`webhook_events`) -> `webhook_events_sensor`
names the row -> a `webhook_events_job` run claims it -> handler updates the tenant.

(a) daemon: the real `dagster-daemon` (the sensor daemon's loop wakes every 5 s, the run is
    queued, dequeued and launched as a new process by the default run launcher). Split using
    the row's `received_at`/`claimed_at`/`processed_at`, the run's record and its events
    (dequeued, launched, process started). `--settings` picks the daemon's settings:
    `shipped` (the repository's dagster.yaml and code location), `today` (the settings before
    they were tuned: the old dagster.yaml below and `bench/today_location.py`, which loads the
    same code with the old executor, sensor intervals and schema check), or `both`, alternating
    `--rounds` times (each round starts a fresh daemon per setting, one warm-up sample each).
(b) in-process: the demo's path (`billing_sandbox.month.SensorPump`: evaluate the
    sensors, `execute_in_process` the requested run on the same Postgres-backed instance), called
    as soon as the row is stored. Separates Dagster's run-launch cost from the handler.

The first sample of each mode is a warm-up (imports, code location load) and is not counted.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import stripe
import uvicorn
from billing_sandbox import services
from billing_sandbox.month import SensorPump
from billing_sandbox.stripe import Settings, run_in_thread
from dagster import DagsterEventType
from psycopg.rows import dict_row

from billing_pipelines.webhooks import ReceiverConfig, create_app

# The sibling benchmark's helper stops a process we started plus the code server the daemon
# puts in a process group of its own.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from webhook_receiver import _stop

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
API_KEY = "sk_test_bench_event_to_effect"
SETTLE_TIMEOUT = 240.0

# The instance settings before the run queue was tuned (Dagster's defaults for the run
# coordinator and the sensor daemon: dequeue every 5 s, no threads, no tag limits).
TODAY_DAGSTER_YAML = """\
storage:
  postgres:
    postgres_url:
      env: DAGSTER_POSTGRES_URL
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
telemetry:
  enabled: false
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
  max_runtime_seconds: 14400
  poll_interval_seconds: 60
run_retries:
  enabled: true
  max_retries: 2
"""
TODAY_WORKSPACE = f"""\
load_from:
  - python_module:
      module_name: today_location
      working_directory: {BENCH}
      location_name: billing_pipelines.definitions
"""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 10 samples p95 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Bench:
    """Sandbox, receiver and billing database shared by both modes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.db = env["DATABASE_URL"]
        self.sandbox = run_in_thread(port=0)
        # Stripe retries failed deliveries for days; nothing should fail here, keep it short.
        self.sandbox.state.settings = Settings(webhook_backoff_seconds=[1, 2, 4])
        self.client = stripe.StripeClient(
            api_key=API_KEY, base_addresses={"api": self.sandbox.url}, max_network_retries=0
        )
        port = services.free_port()
        endpoint = self.client.v1.webhook_endpoints.create(
            {"url": f"http://127.0.0.1:{port}/webhooks/stripe", "enabled_events": ["*"]}
        )
        assert endpoint.secret
        app = create_app(ReceiverConfig(database_url=self.db, secrets=[endpoint.secret]))
        self.receiver = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        threading.Thread(target=self.receiver.run, name="receiver", daemon=True).start()
        product = self.client.v1.products.create({"name": "Pro"})
        self.price = self.client.v1.prices.create(
            {
                "product": product.id,
                "currency": "usd",
                "unit_amount": 9900,
                "recurring": {"interval": "month"},
                "lookup_key": "pro_base",
            }
        ).id
        self.count = 0

    def stop(self) -> None:
        self.receiver.should_exit = True
        self.sandbox.stop()

    def open_rows(self) -> int:
        with psycopg.connect(self.db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM webhook_events "
                "WHERE status NOT IN ('processed', 'ignored', 'dead')"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def settle(self, pump: Callable[[], object] | None = None) -> None:
        """Wait until Stripe delivered everything and every queued row was handled."""
        assert self.sandbox.state.webhooks is not None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            self.sandbox.state.webhooks.drain(30)
            if pump is not None:
                pump()
            if self.open_rows() == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("webhook rows still open after the signup")
            time.sleep(0.2)

    def subscribe(self) -> tuple[str, str]:
        """A tenant with a card and an active subscription; returns (tenant_id, subscription)."""
        i = self.count
        self.count += 1
        tenant = f"bench-e2e-{i:03d}"
        cus = self.client.v1.customers.create({"email": f"{tenant}@example.com"})
        pm = self.client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
        self.client.v1.customers.update(
            cus.id, {"invoice_settings": {"default_payment_method": pm.id}}
        )
        with psycopg.connect(self.db, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id) "
                "VALUES (%s, %s, %s, 'pro', %s)",
                (tenant, tenant, f"{tenant}@example.com", cus.id),
            )
        sub = self.client.v1.subscriptions.create(
            {"customer": cus.id, "items": [{"price": self.price}]}
        )
        return tenant, sub.id

    def status(self, tenant: str) -> str | None:
        with psycopg.connect(self.db) as conn:
            row = conn.execute(
                "SELECT billing_status FROM tenants WHERE tenant_id = %s", (tenant,)
            ).fetchone()
        return None if row is None else str(row[0])

    def is_canceled(self, tenant: str) -> bool:
        """The webhook's effect landed: the tenant's billing status is canceled."""
        return self.status(tenant) == "canceled"

    def cancel_row(self, subscription: str) -> dict[str, Any] | None:
        """The queue row of the cancellation event, once the receiver stored it."""
        with psycopg.connect(self.db, row_factory=dict_row) as conn:
            return conn.execute(
                "SELECT received_at, claimed_at, claimed_by, processed_at, status "
                "FROM webhook_events WHERE event_type = 'customer.subscription.deleted' "
                "AND payload -> 'data' -> 'object' ->> 'id' = %s",
                (subscription,),
            ).fetchone()


def _wait(predicate: Callable[[], Any], timeout: float, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise RuntimeError(f"no effect within {timeout:.0f} s")


def _ts(value: datetime) -> float:
    return value.timestamp()


def inprocess_samples(bench: Bench, samples: int) -> list[dict[str, float]]:
    """The demo's SensorPump, pumped as soon as the cancellation is in the queue."""
    from billing_pipelines.definitions import defs

    pump = SensorPump(defs(), dg.DagsterInstance.get())
    job = pump.definitions.resolve_job_def("webhook_events_job")
    run_walls: list[tuple[float, float]] = []
    execute = job.execute_in_process

    def timed_execute(*args: Any, **kwargs: Any) -> Any:
        # Record each run's wall time as the pump launches it (the pump itself is unchanged).
        started = time.time()
        try:
            return execute(*args, **kwargs)
        finally:
            run_walls.append((started, time.time()))

    setattr(job, "execute_in_process", timed_execute)  # noqa: B010 (mypy: no method assign)
    assert pump.definitions.resolve_job_def("webhook_events_job") is job
    results = []
    # Every sample's signup first, handled in one go: each sample then times a cancellation.
    signups = [bench.subscribe() for _ in range(samples + 1)]
    bench.settle(pump.pump)
    for i, (tenant, sub) in enumerate(signups):
        run_walls.clear()
        t0 = time.time()
        bench.client.v1.subscriptions.cancel(sub)
        row = _wait(partial(bench.cancel_row, sub), 60, poll=0.01)
        stored = time.time()
        pump.pump()
        pumped = time.time()
        assert bench.status(tenant) == "canceled", bench.status(tenant)
        row = bench.cancel_row(sub)
        assert row is not None and row["status"] == "processed", row
        # The run that handled the row: the one whose wall contains the row's processing.
        done = _ts(row["processed_at"])
        (start, end) = next((s, e) for s, e in run_walls if s <= done <= e)
        sample = {
            "total": end - t0,
            "delivery": _ts(row["received_at"]) - t0,
            "sensor": start - stored,
            "run": end - start,
            "handler": done - _ts(row["claimed_at"]),
            "launch": _ts(row["claimed_at"]) - start,
            "pump": pumped - stored,
        }
        label = "warm-up" if i == 0 else f"sample {i}"
        print(
            f"  in-process {label}: {sample['total']:.2f} s (delivery {sample['delivery']:.2f}, "
            f"sensors {sample['sensor']:.2f}, run {sample['run']:.2f} of which handler "
            f"{sample['handler']:.3f})",
            flush=True,
        )
        if i:
            results.append(sample)
    return results


def inprocess_bursts(bench: Bench, sizes: list[int]) -> list[dict[str, float]]:
    """Growth with input: B cancellations at once, in-process, until every tenant is canceled."""
    from billing_pipelines.definitions import defs

    pump = SensorPump(defs(), dg.DagsterInstance.get())
    results = []
    for size in sizes:
        signups = [bench.subscribe() for _ in range(size)]
        bench.settle(pump.pump)
        runs_before = sum(pump.runs.values())
        t0 = time.time()
        for _, sub in signups:
            bench.client.v1.subscriptions.cancel(sub)
        for _, sub in signups:
            _wait(partial(bench.cancel_row, sub), 120, poll=0.01)
        stored = time.time()
        pump.pump()
        end = time.time()
        assert all(bench.status(tenant) == "canceled" for tenant, _ in signups)
        results.append(
            {
                "events": size,
                "total": end - t0,
                "delivery": stored - t0,
                "consume": end - stored,
                "runs": sum(pump.runs.values()) - runs_before,
            }
        )
        print(f"  burst {size}: {results[-1]}", flush=True)
    return results


def daemon_setting(home: Path, setting: str) -> tuple[Path, Path]:
    """(DAGSTER_HOME, workspace file) for the shipped or today's settings; one storage for both."""
    dagster_home = home / f"dagster_{setting}"
    dagster_home.mkdir(exist_ok=True)
    if setting == "shipped":
        (dagster_home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        return dagster_home, ROOT / "workspace.yaml"
    (dagster_home / "dagster.yaml").write_text(TODAY_DAGSTER_YAML)
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(TODAY_WORKSPACE)
    return dagster_home, workspace


RUN_EVENTS = {
    DagsterEventType.RUN_DEQUEUED: "dequeued",
    DagsterEventType.RUN_STARTING: "launched",
    DagsterEventType.RUN_START: "started",
}


def run_event_times(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """When the run left the queue, was handed to the launcher, and its process began the run."""
    times: dict[str, float] = {}
    for entry in instance.all_logs(run_id, of_type=set(RUN_EVENTS)):
        name = RUN_EVENTS[DagsterEventType(entry.dagster_event_type)]
        times.setdefault(name, entry.timestamp)
    return times


def daemon_samples(
    bench: Bench, env: dict[str, str], home: Path, samples: int, setting: str = "shipped"
) -> list[dict[str, float]]:
    """The real dagster-daemon: sensor tick, queued run, new process, handler."""
    instance = dg.DagsterInstance.get()
    dagster_home, workspace = daemon_setting(home, setting)
    log = home / f"daemon_{setting}.log"
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=ROOT,
        env={**os.environ, **env, "DAGSTER_HOME": str(dagster_home)},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results = []
    try:
        signups = [bench.subscribe() for _ in range(samples + 1)]
        bench.settle()
        for i, (tenant, sub) in enumerate(signups):
            t0 = time.time()
            bench.client.v1.subscriptions.cancel(sub)
            try:
                _wait(partial(bench.is_canceled, tenant), 300, poll=0.02)
            except RuntimeError:
                raise RuntimeError("no effect; daemon log:\n" + log.read_text()[-3000:]) from None
            seen = time.time()
            row = _wait(partial(bench.cancel_row, sub), 10)
            record = instance.get_run_record_by_id(row["claimed_by"])
            assert record is not None
            created = record.create_timestamp.timestamp()
            events = run_event_times(instance, row["claimed_by"])
            launched = events.get("launched", created)
            started = events.get("started", launched)
            claimed = _ts(row["claimed_at"])
            sample = {
                "total": seen - t0,
                "delivery": _ts(row["received_at"]) - t0,
                # Sensor tick: row stored -> run created by the daemon's sensor evaluation.
                "sensor": created - _ts(row["received_at"]),
                # Queue + launch: run created -> the op claims the row (new process, imports,
                # code location, resources), split below.
                "launch": claimed - created,
                # Run created -> dequeued and handed to the launcher (the dequeue loop).
                "queue": launched - created,
                # Launcher -> the run's process has started (interpreter, Dagster, definitions).
                "process": started - launched,
                # Run started -> the op claims the row (step process if any, resources).
                "in_run": claimed - started,
                "handler": _ts(row["processed_at"]) - claimed,
                "run": (record.end_time or seen) - (record.start_time or created),
            }
            label = "warm-up" if i == 0 else f"sample {i}"
            print(
                f"  daemon [{setting}] {label}: {sample['total']:.1f} s (delivery "
                f"{sample['delivery']:.2f}, sensor {sample['sensor']:.1f}, queue "
                f"{sample['queue']:.1f}, process start {sample['process']:.1f}, in the run "
                f"until the claim {sample['in_run']:.1f}, handler {sample['handler']:.3f})",
                flush=True,
            )
            if i:
                results.append(sample)
    finally:
        _stop(daemon)
    return results


def _summary(name: str, results: list[dict[str, float]], keys: list[str]) -> None:
    print(f"\n| {name} ({len(results)} samples) | p50 | p95 | min | max |")
    print("|---|---|---|---|---|")
    for key in keys:
        values = [r[key] for r in results]
        print(
            f"| {key} | {percentile(values, 50):.2f} s | {percentile(values, 95):.2f} s | "
            f"{min(values):.2f} s | {max(values):.2f} s |"
        )
    totals = [r["total"] for r in results]
    print(f"mean total {statistics.mean(totals):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inprocess-samples", type=int, default=12)
    parser.add_argument("--daemon-samples", type=int, default=10)
    parser.add_argument(
        "--burst", type=int, nargs="*", default=[], help="in-process burst sizes, e.g. 1 25 100"
    )
    parser.add_argument(
        "--settings",
        choices=["shipped", "today", "both"],
        default="shipped",
        help="the daemon's settings: as shipped, as before tuning, or both alternating",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --settings both: alternate this many times (samples split between rounds)",
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench_event_to_effect_"))
    print(
        f"python {platform.python_version()}, {os.cpu_count()} vCPU, load average "
        f"{os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    bench = None
    bursts: list[dict[str, float]] = []
    try:
        env = services.up(home, with_clickhouse=False, with_stripe=False)
        bench = Bench(env)
        env = {
            **env,
            "BILLING_HOME": str(home),
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": bench.sandbox.url,
            "CLICKHOUSE_URL": "http://127.0.0.1:1/unused",
        }
        # Runs in this process and the daemon read their settings from the environment.
        os.environ.update(env)
        inproc = inprocess_samples(bench, args.inprocess_samples) if args.inprocess_samples else []
        bursts = inprocess_bursts(bench, args.burst)
        settings = ["today", "shipped"] if args.settings == "both" else [args.settings]
        rounds = max(1, args.rounds) if args.settings == "both" else 1
        daemon: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
        for r in range(rounds if args.daemon_samples else 0):
            # Split the samples between rounds; the first rounds take any remainder.
            count = args.daemon_samples // rounds + (1 if r < args.daemon_samples % rounds else 0)
            for name in settings if r % 2 == 0 else reversed(settings):
                daemon[name] += daemon_samples(bench, env, home, count, name)
    finally:
        if bench is not None:
            bench.stop()
        services.down(home)
        shutil.rmtree(home, ignore_errors=True)
    keys = ["total", "delivery", "sensor", "launch", "handler", "run"]
    if inproc:
        _summary("in-process SensorPump", inproc, keys)
    daemon_keys = ["total", "delivery", "sensor", "queue", "process", "in_run", "handler", "run"]
    for name, results in daemon.items():
        if results:
            _summary(f"dagster-daemon, {name} settings", results, daemon_keys)
    if all(daemon.get(name) for name in ("today", "shipped")):
        print("\n| shipped / today | p50 | p95 |\n|---|---|---|")
        for key in ("total", "sensor", "queue", "process", "in_run"):
            new = [r[key] for r in daemon["shipped"]]
            old = [r[key] for r in daemon["today"]]
            print(
                f"| {key} | {percentile(new, 50) / percentile(old, 50):.2f} | "
                f"{percentile(new, 95) / percentile(old, 95):.2f} |"
            )
    if bursts:
        print(
            "| cancellations at once | runs | delivered and stored | consumed (sensor + runs) "
            "| total | per event |\n|---|---|---|---|---|---|"
        )
        for b in bursts:
            print(
                f"| {b['events']:.0f} | {b['runs']:.0f} | {b['delivery']:.2f} s | "
                f"{b['consume']:.2f} s | {b['total']:.2f} s | {b['total'] / b['events']:.3f} s |"
            )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
