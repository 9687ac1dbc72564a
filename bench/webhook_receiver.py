"""Benchmark: the webhook receiver on one uvicorn worker, and event-to-effect through the sensor.

Reproduce: `python bench/webhook_receiver.py --events 10000 --concurrency 32 --rate 200
--seconds 15 --effects 5`; for the growth with the offered load, repeat `--rate` (e.g.
`--rate 100 --rate 200 --rate 400`): each rate is paced in turn against the same receiver.

Starts embedded PostgreSQL under a temporary BILLING_HOME and `billing webhooks serve` (one
uvicorn worker, its own process) on loopback. A bounded asyncio load generator (httpx, keep-alive,
loopback only) posts pre-signed Stripe event bodies (signing is the sender's cost, not ours):

1. sustained: `--events` distinct events at `--concurrency` in flight -> verified events/s;
2. fixed rate: `--rate` events/s for `--seconds` -> p50/p99/max acknowledgement latency;
both then count rows: every 200 must be exactly one row (zero loss, zero duplicates).
3. event-to-effect (`--effects` > 0): the Stripe sandbox in-process, the receiver, and the real
`dagster-daemon` on a Postgres-backed instance; each sample cancels a subscription in Stripe
and times until the tenant row shows `canceled` (sensor tick + run launch + handler).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from billing_sandbox import postgres, services

from billing_pipelines.lib.webhooks.signature import expected_signature

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench_secret"
BIN = Path(sys.executable).parent


def _body(i: int, run: str) -> bytes:
    return json.dumps(
        {
            "id": f"evt_bench_{run}_{i:07d}",
            "object": "event",
            "type": "invoice.paid",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": {"id": f"in_bench_{i}", "object": "invoice", "customer": "cus_x"}},
        }
    ).encode()


def _signed(bodies: list[bytes]) -> list[tuple[bytes, str]]:
    t = int(time.time())
    return [(b, f"t={t},v1={expected_signature(b, t, SECRET)}") for b in bodies]


class _Conn:
    """One keep-alive HTTP/1.1 connection with raw asyncio streams: a load generator whose own
    cost per request is far below the server's (httpx's async client is not)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, signature: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _target(url: str) -> tuple[str, int, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port, parts.path


async def _sustained(url: str, items: list[tuple[bytes, str]], concurrency: int) -> dict[str, Any]:
    host, port, path = _target(url)
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    statuses: list[int] = []

    async def worker() -> None:
        conn = _Conn(host, port)
        try:
            while True:
                try:
                    body, sig = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                statuses.append(await conn.post(path, body, sig))
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "ok": statuses.count(200), "sent": len(items)}


async def _fixed_rate(url: str, items: list[tuple[bytes, str]], rate: float) -> dict[str, Any]:
    host, port, path = _target(url)
    latencies: list[float] = []
    statuses: list[int] = []
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(64):
        idle.put_nowait(_Conn(host, port))

    async def one(body: bytes, sig: str, due: float) -> None:
        conn = await idle.get()
        try:
            statuses.append(await conn.post(path, body, sig))
        finally:
            idle.put_nowait(conn)
        # Latency from the scheduled send time: waiting for a free connection counts too.
        latencies.append(time.perf_counter() - due)

    tasks = []
    start = time.perf_counter()
    for i, (body, sig) in enumerate(items):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, sig, due)))
    await asyncio.gather(*tasks)
    achieved = len(items) / (time.perf_counter() - start)
    while not idle.empty():
        idle.get_nowait().close()
    latencies.sort()
    n = len(latencies)
    return {
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "max_ms": latencies[-1] * 1000,
        "ok": statuses.count(200),
        "sent": n,
        "achieved_rate": achieved,
    }


def _rows(url: str, prefix: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM webhook_events WHERE event_id LIKE %s",
            (prefix + "%",),
        ).fetchone()
    assert row is not None
    assert row[0] == row[1]
    return int(row[0])


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(BIN / "billing"), "webhooks", "serve", "--port", str(port)],
        env={**env, "METRICS_PORT": "0"},  # not measured here; never clash with another one
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, its session, and any descendant in a group of its own
    (the daemon's code server)."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    for child in family:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for child in alive:
        child.kill()


def _effects(env: dict[str, str], home: Path, samples: int) -> list[float]:
    """Seconds from a Stripe-side change to its effect in the tenant row, via the daemon."""
    import stripe
    from billing_sandbox.stripe import Settings, run_in_thread

    from billing_pipelines.webhooks import ReceiverConfig, create_app

    sandbox = run_in_thread(port=0)
    sandbox.state.settings = Settings(webhook_backoff_seconds=[1, 2, 4])
    client = stripe.StripeClient(
        api_key="sk_test_bench", base_addresses={"api": sandbox.url}, max_network_retries=0
    )
    import threading

    import uvicorn

    port = services.free_port()
    endpoint = client.v1.webhook_endpoints.create(
        {"url": f"http://127.0.0.1:{port}/webhooks/stripe", "enabled_events": ["*"]}
    )
    assert endpoint.secret  # Stripe returns the signing secret only when the endpoint is created
    app = create_app(ReceiverConfig(database_url=env["DATABASE_URL"], secrets=[endpoint.secret]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    dagster_home = home / "dagster_bench"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    daemon_env = {
        **env,
        "DAGSTER_HOME": str(dagster_home),
        "STRIPE_API_KEY": "sk_test_bench",
        "STRIPE_API_BASE": sandbox.url,
    }
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=daemon_env,
        stdout=(home / "daemon.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    product = client.v1.products.create({"name": "Pro"})
    price = client.v1.prices.create(
        {
            "product": product.id,
            "currency": "usd",
            "unit_amount": 9900,
            "recurring": {"interval": "month"},
            "lookup_key": "pro_base",
        }
    )
    timings: list[float] = []
    try:
        time.sleep(20)  # let the daemon load the code location before the first sample
        for i in range(samples):
            cus = client.v1.customers.create({"email": f"b{i}@x.io"})
            pm = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
            client.v1.customers.update(
                cus.id, {"invoice_settings": {"default_payment_method": pm.id}}
            )
            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id) "
                    "VALUES (%s, 'B', 'b@x.io', 'pro', %s)",
                    (f"bench-{i}", cus.id),
                )
            sub = client.v1.subscriptions.create(
                {"customer": cus.id, "items": [{"price": price.id}]}
            )
            time.sleep(5)  # let the creation settle so the sample measures the cancellation only
            t0 = time.perf_counter()
            client.v1.subscriptions.cancel(sub.id)
            deadline = t0 + 180
            while time.perf_counter() < deadline:
                with psycopg.connect(env["DATABASE_URL"]) as conn:
                    row = conn.execute(
                        "SELECT billing_status FROM tenants WHERE tenant_id = %s", (f"bench-{i}",)
                    ).fetchone()
                if row and row[0] == "canceled":
                    timings.append(time.perf_counter() - t0)
                    break
                time.sleep(0.1)
            else:
                tail = (home / "daemon.log").read_text()[-3000:]
                raise RuntimeError(f"no effect within 180 s; daemon log:\n{tail}")
            print(f"  effect sample {i + 1}: {timings[-1]:.1f} s", flush=True)
    finally:
        _stop(daemon)
        server.should_exit = True
        sandbox.stop()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, action="append", help="events/s (default 200)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--effects", type=int, default=5)
    args = parser.parse_args()
    args.rate = args.rate or [200.0]
    if args.events > 200_000 or max(args.rate) * args.seconds > 100_000:
        raise SystemExit("bounded benchmark: at most 200,000 sustained / 100,000 paced events")

    home = Path(tempfile.mkdtemp(prefix="bench_webhooks_"))
    started = time.time()
    try:
        env_services = services.up(home, with_clickhouse=False, with_stripe=False)
        db = env_services["DATABASE_URL"]
        env = {
            **os.environ,
            **env_services,
            "BILLING_HOME": str(home),
            "STRIPE_WEBHOOK_SECRETS": SECRET,
            "CLICKHOUSE_URL": "http://127.0.0.1:1/x",
            "STRIPE_API_KEY": "sk_test_unused",
        }
        port = services.free_port()
        receiver = _serve(env, port, home / "receiver.log")
        url = f"http://127.0.0.1:{port}/webhooks/stripe"
        try:
            run = uuid.uuid4().hex[:6]
            items = _signed([_body(i, run) for i in range(args.events)])
            sustained = asyncio.run(_sustained(url, items, args.concurrency))
            stored = _rows(db, f"evt_bench_{run}_")
            paced = []
            for rate in args.rate:
                run2 = uuid.uuid4().hex[:6]
                paced_items = _signed([_body(i, run2) for i in range(int(rate * args.seconds))])
                result = asyncio.run(_fixed_rate(url, paced_items, rate))
                paced.append((rate, result, _rows(db, f"evt_bench_{run2}_")))
        finally:
            _stop(receiver)
        _report(started, args, sustained, stored, paced)
        # The load phases leave thousands of synthetic rows: clear them so the effect samples
        # measure latency, not a backlog.
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("DELETE FROM webhook_events WHERE event_id LIKE 'evt_bench_%'")
        effects = _effects(env, home, args.effects) if args.effects else []
    finally:
        services.down(home)
        if postgres.is_running(home / "postgres"):
            postgres.stop(home / "postgres")
        shutil.rmtree(home, ignore_errors=True)

    if effects:
        print(
            f"event-to-effect via dagster-daemon ({len(effects)} samples): median "
            f"{statistics.median(effects):.1f} s, min {min(effects):.1f} s, "
            f"max {max(effects):.1f} s"
        )


def _report(
    started: float,
    args: argparse.Namespace,
    sustained: dict[str, Any],
    stored: int,
    paced: list[tuple[float, dict[str, Any], int]],
) -> None:
    load = os.getloadavg()[0]
    print(
        f"\nmachine: Python {platform.python_version()}, {os.cpu_count()} vCPU, load average "
        f"{load:.1f}, {time.ctime(started)}"
    )
    print(
        f"sustained: {sustained['sent']:,} events, {args.concurrency} in flight: "
        f"{sustained['sent'] / sustained['elapsed']:,.0f} verified events/s; "
        f"200s {sustained['ok']:,}, rows {stored:,} (loss {sustained['sent'] - stored})"
    )
    for rate, result, rows in paced:
        print(
            f"fixed rate {rate:.0f}/s for {args.seconds:.0f} s (achieved "
            f"{result['achieved_rate']:.0f}/s): p50 {result['p50_ms']:.1f} ms, p99 "
            f"{result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; 200s {result['ok']:,}, "
            f"rows {rows:,} (loss {result['sent'] - rows})",
            flush=True,
        )
    print("\n| offered rate | achieved | p50 | p99 | max | acknowledged | loss |")
    print("|---|---|---|---|---|---|---|")
    for rate, result, rows in paced:
        print(
            f"| {rate:.0f}/s | {result['achieved_rate']:.0f}/s | {result['p50_ms']:.1f} ms | "
            f"{result['p99_ms']:.1f} ms | {result['max_ms']:.1f} ms | {result['ok']:,} of "
            f"{result['sent']:,} | {result['sent'] - rows} |"
        )


if __name__ == "__main__":
    main()
