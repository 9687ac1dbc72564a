"""Benchmark: CPU per meter event of the client's send path and of the sandbox, no Dagster.

Reproduce: `python bench/meter_send_loop.py --events 3000 --workers 8 --workers 32`

The bare loop under the meter push: the project's Stripe client (official SDK, paced
transport, process budget) sending meter events through `pacing.run_paced` with
`meters.send_meter_event`, against the Stripe sandbox in a separate process limiting meter
events as a live account does (1,000/s). No ledger and no Dagster run: what is left is the
per-event cost of the client and of the sandbox, measured as CPU seconds of each process per
event (Linux /proc), so a change to either side can be compared in one session by running this
script on the tree before and after it, alternating. `--profile DIR` writes py-spy's collapsed
stacks (`py-spy record --gil -f raw`) of both processes while the events are sent.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import stripe
from billing_sandbox.ports import free_port

from billing_pipelines.lib.metering.planning import MeterReport
from billing_pipelines.lib.stripe import meters as stripe_meters
from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe.client import RateLimits, make_client
from billing_pipelines.lib.stripe.meters import RetryableStripeError

API_KEY = "sk_test_bench_meter_send_loop"
EVENT_NAME = "bench_queries"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve(port: int, meter_rate: float) -> None:
    """The sandbox's process: one server limiting meter events as live mode does."""
    from billing_sandbox.stripe import run_in_thread

    run_in_thread(port=port, rate_limit=100.0, endpoint_rate_limit=25.0,
                  meter_events_rate_limit=meter_rate)  # fmt: skip
    while True:
        time.sleep(3600)


@dataclass
class Measured:
    workers: int
    events: int
    seconds: float
    client_ms: float
    sandbox_ms: float
    retried: int


def _reports(customers: list[str], events: int, tag: str) -> list[MeterReport]:
    stamp = int((datetime.now(UTC) - timedelta(days=1)).timestamp())
    return [
        MeterReport(
            tenant_id=f"t{i % len(customers)}",
            metric="queries",
            usage_date=datetime.now(UTC).date() - timedelta(days=1),
            value=1000 + i,
            value_version=1,
            identifier=f"{tag}-{i}",
            event_name=EVENT_NAME,
            stripe_customer_id=customers[i % len(customers)],
            timestamp=stamp,
        )
        for i in range(events)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--workers", type=int, action="append", help="default 32")
    parser.add_argument("--meter-rate", type=float, default=1000.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--profile", type=Path, help="write py-spy collapsed stacks here")
    args = parser.parse_args()
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(port, args.meter_rate), daemon=True
    )
    server.start()
    assert server.pid is not None
    url = f"http://127.0.0.1:{port}"
    try:
        setup = stripe.StripeClient(api_key=API_KEY, base_addresses={"api": url})
        deadline = time.monotonic() + 180  # a loaded host takes a while to start the sandbox
        while True:
            try:
                setup.v1.billing.meters.create(
                    {
                        "display_name": "queries",
                        "event_name": EVENT_NAME,
                        "default_aggregation": {"formula": "sum"},
                    }
                )
                break
            except stripe.APIConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        limits = RateLimits.for_key(
            API_KEY,
            global_per_second=100.0,
            endpoint_per_second=25.0,
            meter_events_per_second=args.meter_rate,
        )
        client = make_client(API_KEY, api_base=url, max_network_retries=0, limits=limits)
        # Through the paced client: the sandbox limits customer creation to 25/s.
        customers = [client.v1.customers.create({}).id for _ in range(args.customers)]
        rows = []
        runs = [w for _ in range(args.repeat) for w in (args.workers or [32])]
        for n, workers in enumerate(runs):
            reports = _reports(customers, args.events, f"run{n}-{time.time_ns()}")
            retried = 0

            def send(report: MeterReport) -> stripe_meters.SendOutcome:
                nonlocal retried
                try:
                    return stripe_meters.send_meter_event(client, report)
                except RetryableStripeError:
                    retried += 1
                    raise

            delivered = 0

            def count(report: MeterReport, outcome: stripe_meters.SendOutcome) -> None:
                nonlocal delivered
                delivered += outcome.status == "delivered"

            spies = []
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                for who, pid in (("client", os.getpid()), ("sandbox", server.pid)):
                    out = args.profile / f"{who}-w{workers}-{n}.txt"
                    spies.append(
                        subprocess.Popen(
                            [
                                "py-spy",
                                "record",
                                "--gil",
                                "-f",
                                "raw",
                                "-r",
                                "200",
                                "-p",
                                str(pid),
                                "-o",
                                str(out),
                            ],  # fmt: skip
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
                time.sleep(1.0)
            time.sleep(1.1)  # the sandbox's bucket fills, as an idle account's would
            client_cpu, server_cpu = _cpu_seconds(os.getpid()), _cpu_seconds(server.pid)
            started = time.perf_counter()
            pacing.run_paced(
                reports,
                send,
                count,
                limiter=stripe_meters.event_limiter(client, args.meter_rate),
                retryable=RetryableStripeError,
                workers=workers,
            )
            seconds = time.perf_counter() - started
            client_cpu = _cpu_seconds(os.getpid()) - client_cpu
            server_cpu = _cpu_seconds(server.pid) - server_cpu
            for spy in spies:
                spy.send_signal(2)  # py-spy writes its stacks on SIGINT
                spy.wait(timeout=60)
            assert delivered == args.events, delivered
            row = Measured(
                workers,
                args.events,
                seconds,
                1000 * client_cpu / args.events,
                1000 * server_cpu / args.events,
                retried,
            )
            rows.append(row)
            print(
                f"workers {workers}: {args.events} events in {seconds:.2f}s "
                f"({args.events / seconds / args.meter_rate:.2f} of the limit), CPU per event: "
                f"client {row.client_ms:.2f} ms, sandbox {row.sandbox_ms:.2f} ms, retried "
                f"{retried}; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        server.kill()  # the process this benchmark started, by its handle
        server.join()


if __name__ == "__main__":
    main()
