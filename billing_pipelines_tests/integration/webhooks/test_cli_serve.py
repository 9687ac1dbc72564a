"""`billing webhooks serve`: serves the receiver from the environment; refuses without secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from billing_pipelines.lib.webhooks.signature import expected_signature
from billing_pipelines_tests.webhook_harness import free_port, query

BILLING = str(Path(sys.executable).parent / "billing")


def _env(embedded_services: dict[str, str], db: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, **embedded_services, "DATABASE_URL": db}
    env.pop("STRIPE_WEBHOOK_SECRETS", None)
    # Its own metrics port: test sessions and other receivers on this machine run at once.
    env["METRICS_PORT"] = str(free_port())
    env.update(extra)
    return env


def test_serve_refuses_without_webhook_secrets(
    embedded_services: dict[str, str], billing_db_url: str
) -> None:
    result = subprocess.run(
        [BILLING, "webhooks", "serve", "--port", str(free_port())],
        env=_env(embedded_services, billing_db_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: STRIPE_WEBHOOK_SECRETS is not set")


def test_serve_stores_a_signed_event(
    embedded_services: dict[str, str], billing_db_url: str
) -> None:
    port = free_port()
    secret = "whsec_cli_test_secret"
    process = subprocess.Popen(
        [BILLING, "webhooks", "serve", "--port", str(port)],
        env=_env(embedded_services, billing_db_url, STRIPE_WEBHOOK_SECRETS=f"whsec_old,{secret}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        body = b'{"id": "evt_cli", "object": "event", "type": "invoice.paid", "data": {}}'
        t = int(time.time())
        header = f"t={t},v1={expected_signature(body, t, secret)}"
        response = httpx.post(
            f"{base}/webhooks/stripe", content=body, headers={"Stripe-Signature": header}
        )
        assert response.status_code == 200
        assert query(billing_db_url, "SELECT event_id FROM webhook_events") == [
            {"event_id": "evt_cli"}
        ]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=20)[0].decode()
    assert secret not in output and header not in output
