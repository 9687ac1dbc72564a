"""`billing webhooks serve` as deployed: a bounded request head, bounded concurrency, and
Prometheus metrics on their own loopback listener rather than the public webhook port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from billing_pipelines.lib.webhooks.signature import expected_signature
from billing_pipelines_tests.webhook_harness import free_port, query

BILLING = str(Path(sys.executable).parent / "billing")
SECRET = "whsec_serve_limits_secret"
MAX_HEADER_BYTES = 8 * 1024
MAX_CONCURRENCY = 3


@dataclass
class Served:
    base: str
    port: int
    metrics_port: int
    db: str


def _env(embedded_services: dict[str, str], db: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, **embedded_services, "DATABASE_URL": db, "STRIPE_WEBHOOK_SECRETS": SECRET}
    env.update(extra)
    return env


@pytest.fixture
def served(embedded_services: dict[str, str], billing_db_url: str) -> Iterator[Served]:
    port, metrics_port = free_port(), free_port()
    env = _env(
        embedded_services,
        billing_db_url,
        WEBHOOK_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        WEBHOOK_MAX_CONCURRENCY=str(MAX_CONCURRENCY),
        METRICS_PORT=str(metrics_port),
    )
    process = subprocess.Popen(
        [BILLING, "webhooks", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        yield Served(base, port, metrics_port, billing_db_url)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode()
    # A refused head is one warning line from the server, never a traceback.
    assert "Traceback" not in output


def _signed(body: bytes) -> dict[str, str]:
    t = int(time.time())
    return {"Stripe-Signature": f"t={t},v1={expected_signature(body, t, SECRET)}"}


def _rows(db: str) -> list[str]:
    return [r["event_id"] for r in query(db, "SELECT event_id FROM webhook_events ORDER BY id")]


def test_request_heads_are_bounded_and_a_normal_event_still_lands(served: Served) -> None:
    url = f"{served.base}/webhooks/stripe"
    body = b'{"id": "evt_big_head", "object": "event", "type": "invoice.paid", "data": {}}'
    # A validly signed event carrying 1 MiB of extra headers: refused before the app runs.
    padding = {f"X-Pad-{i}": "p" * 1000 for i in range(1024)}
    # The parser stops buffering the incomplete head (400), or the app measures it (431); the
    # server may close while the client is still sending the rest of the megabyte, which the
    # client then sees as a reset instead of the answer. Either way it is refused.
    try:
        refused = httpx.post(url, content=body, headers={**_signed(body), **padding}, timeout=30)
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
        pass
    else:
        assert refused.status_code in (400, 431)
    # Just over the configured bound (one header of MAX_HEADER_BYTES) is refused too ...
    over = httpx.post(
        url, content=body, headers={**_signed(body), "X-Pad": "p" * MAX_HEADER_BYTES}, timeout=30
    )
    assert (over.status_code, over.json()) == (
        431,
        {"error": f"request headers larger than {MAX_HEADER_BYTES} bytes"},
    )
    assert _rows(served.db) == []
    # ... and a head well under it is served: the same event lands once.
    under = httpx.post(
        url,
        content=body,
        headers={**_signed(body), "X-Pad": "p" * (MAX_HEADER_BYTES // 2)},
        timeout=30,
    )
    assert under.status_code == 200
    assert _rows(served.db) == ["evt_big_head"]
    metrics = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5).text
    assert 'billing_webhook_requests_rejected_total{reason="headers_too_large"} 1.0' in metrics


def test_connections_beyond_the_concurrency_bound_get_503(served: Served) -> None:
    held: list[socket.socket] = []
    try:
        # Hold MAX_CONCURRENCY connections open mid-request (a slow or hostile client).
        for _ in range(MAX_CONCURRENCY):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        deadline = time.monotonic() + 15
        while True:
            status = httpx.get(f"{served.base}/healthz", timeout=5).status_code
            if status == 503:
                break
            assert status == 200
            assert time.monotonic() < deadline, "never refused beyond the concurrency bound"
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
    # Once the held connections are gone, requests are served again.
    deadline = time.monotonic() + 15
    while httpx.get(f"{served.base}/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_metrics_have_their_own_loopback_listener(served: Served) -> None:
    assert httpx.get(f"{served.base}/metrics").status_code == 404
    metrics = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "billing_webhook_requests_rejected_total" in metrics.text
    # Bound to loopback only: the machine's other addresses do not answer on that port.
    outward = _non_loopback_address()
    if outward is not None:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{outward}:{served.metrics_port}/metrics", timeout=2)


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
            address = str(sock.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_several_workers_with_a_metrics_port_is_refused_in_one_line(
    embedded_services: dict[str, str], billing_db_url: str
) -> None:
    result = subprocess.run(
        [BILLING, "webhooks", "serve", "--port", str(free_port()), "--workers", "2"],
        env=_env(embedded_services, billing_db_url, METRICS_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: METRICS_PORT: the metrics listener serves")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_metrics_port_in_use_is_one_line(
    embedded_services: dict[str, str], billing_db_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [BILLING, "webhooks", "serve", "--port", str(free_port())],
            env=_env(embedded_services, billing_db_url, METRICS_PORT=str(busy)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: METRICS_PORT: cannot listen on 127.0.0.1:{busy} (Address already in use); "
        "choose another METRICS_PORT"
    ]
