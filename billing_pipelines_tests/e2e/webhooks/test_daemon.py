"""The real `dagster-daemon` on the Postgres-backed instance: a delivered webhook becomes a
sensor-launched run and its effect, with no test code driving the sensor."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle
from psycopg import sql

from billing_pipelines.webhooks import ReceiverConfig
from billing_pipelines_tests.support import API_KEY
from billing_pipelines_tests.webhook_harness import (
    ReceiverServer,
    free_port,
    query,
    register_endpoint,
)

ROOT = Path(__file__).resolve().parents[3]
DAEMON_TIMEOUT = 180


@pytest.fixture
def dagster_storage(embedded_services: dict[str, str]) -> Iterator[str]:
    """A fresh Postgres database for Dagster's runs, event logs and sensor ticks."""
    base = embedded_services["DAGSTER_POSTGRES_URL"]
    admin = base.rsplit("/", 1)[0] + "/postgres"
    name = f"dagster_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the daemon and everything it started: its session, and the code server, which
    Dagster puts in a process group of its own."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for child in family:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for child in alive:
        child.kill()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def test_daemon_turns_a_delivered_webhook_into_a_run_and_its_effect(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    dagster_storage: str,
    tmp_path: Path,
) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    port = free_port()
    secret = register_endpoint(stripe_client, f"http://127.0.0.1:{port}/webhooks/stripe")
    receiver = ReceiverServer(
        ReceiverConfig(database_url=billing_db_url, secrets=[secret]), port=port
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_POSTGRES_URL": dagster_storage,
        "DATABASE_URL": billing_db_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": stripe_sandbox.url,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "BILLING_HOME": str(tmp_path / "billing_home"),
    }
    env.pop("SMTP_URL", None)
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        customer = stripe_client.v1.customers.create({"email": "daemon@tenant.example"})
        card = stripe_client.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
        stripe_client.v1.customers.update(
            customer.id, {"invoice_settings": {"default_payment_method": card.id}}
        )
        query(
            billing_db_url,
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id) "
            "VALUES ('daemon', 'Daemon Co', 'daemon@tenant.example', 'pro', %s)",
            (customer.id,),
        )
        product = stripe_client.v1.products.create({"name": "Pro"})
        price = stripe_client.v1.prices.create(
            {
                "product": product.id,
                "currency": "usd",
                "unit_amount": 9900,
                "recurring": {"interval": "month"},
                "lookup_key": "pro_base",
            }
        )
        subscription = stripe_client.v1.subscriptions.create(
            {"customer": customer.id, "items": [{"price": price.id}]}
        )
        stripe_client.v1.subscriptions.cancel(subscription.id)  # cancelled in Stripe
        assert stripe_sandbox.state.webhooks is not None
        assert stripe_sandbox.state.webhooks.drain(10)

        deadline = time.monotonic() + DAEMON_TIMEOUT
        row: dict[str, object] = {}
        while time.monotonic() < deadline:
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            row = query(
                billing_db_url,
                "SELECT billing_status, api_access_enabled, stripe_subscription_id "
                "FROM tenants WHERE tenant_id = 'daemon'",
            )[0]
            done = query(
                billing_db_url,
                "SELECT count(*) AS n FROM webhook_events "
                "WHERE event_type = 'customer.subscription.deleted' AND status = 'processed'",
            )[0]["n"]
            if done and row["billing_status"] == "canceled":
                break
            time.sleep(1)
        else:
            pytest.fail(
                f"no effect within {DAEMON_TIMEOUT}s: tenant {row}\n"
                + (tmp_path / "daemon.log").read_text()[-3000:]
            )
        assert row == {
            "billing_status": "canceled",
            "api_access_enabled": False,
            "stripe_subscription_id": subscription.id,
        }
        # The runs were launched by the daemon's sensor, keyed by queue row ids.
        runs = query(
            dagster_storage,
            "SELECT r.pipeline_name, r.status, t.value AS run_key FROM runs r "
            "JOIN run_tags t ON t.run_id = r.run_id AND t.key = 'dagster/run_key' "
            "WHERE r.pipeline_name = 'webhook_events_job'",
        )
        assert runs and all(r["run_key"].startswith("webhook_events:") for r in runs)
        sensor_tags = query(
            dagster_storage,
            "SELECT value FROM run_tags WHERE key = 'dagster/sensor_name'",
        )
        assert {"webhook_events_sensor"} <= {t["value"] for t in sensor_tags}
    finally:
        _stop(daemon)
        log.close()
        receiver.stop()
