"""Real parts for webhook and dunning tests: a fresh billing database, the receiver on loopback,
a real SMTP server (aiosmtpd), and a pump that evaluates the real sensors and runs the jobs they
request (honouring run_key dedup like the daemon does). Fixtures are re-exported by the
conftest.py of each test folder that uses them.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import dagster as dg
import psycopg
import pytest
import stripe
import uvicorn
from aiosmtpd.controller import Controller
from billing_sandbox.ports import free_port
from billing_sandbox.stripe import SandboxHandle
from psycopg import sql
from psycopg.rows import dict_row

from billing_pipelines.defs.dunning.jobs import dunning_step_job
from billing_pipelines.defs.dunning.sensors import dunning_sensor
from billing_pipelines.defs.notifications.jobs import notification_delivery_job
from billing_pipelines.defs.notifications.resources import EmailResource
from billing_pipelines.defs.notifications.sensors import notification_outbox_sensor
from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.defs.webhooks.jobs import webhook_events_job
from billing_pipelines.defs.webhooks.sensors import webhook_events_sensor
from billing_pipelines.lib.pg import migrations
from billing_pipelines.webhooks import ReceiverConfig, create_app
from billing_pipelines_tests.support import API_KEY

T0 = 1767225600  # 2026-01-01T00:00:00Z
DAY = 86400


# ---- a fresh billing database per test (cloned from a migrated template) -----------------------

_TEMPLATE_LOCK = threading.Lock()
_TEMPLATES: dict[str, str] = {}


def _admin(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


def _template(base_url: str) -> str:
    with _TEMPLATE_LOCK:
        if base_url not in _TEMPLATES:
            name = f"billing_tpl_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(_admin(base_url), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            url = base_url.rsplit("/", 1)[0] + f"/{name}"
            migrations.upgrade_to_head(url)
            _TEMPLATES[base_url] = name
        return _TEMPLATES[base_url]


@pytest.fixture
def billing_db_url(embedded_services: dict[str, str]) -> Iterator[str]:
    """A brand-new, migrated billing database on the embedded server, dropped afterwards."""
    base = embedded_services["DATABASE_URL"]
    template = _template(base)
    name = f"billing_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin(base), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(_admin(base), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def query(url: str, statement: str, params: Any = None) -> list[dict[str, Any]]:
    """Run one statement and return its rows as dicts (autocommit)."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


# ---- the receiver on loopback ------------------------------------------------------------------


class ReceiverServer:
    """The real ASGI receiver under uvicorn on a loopback port, in a thread."""

    def __init__(self, config: ReceiverConfig, port: int | None = None) -> None:
        if config.metrics_port is None:
            # Metrics have their own listener: an ephemeral loopback port for each test.
            config = dataclasses.replace(config, metrics_port=0)
        self.app = create_app(config)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="receiver", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("receiver did not start")
            time.sleep(0.01)

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/stripe"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics, on the receiver's own metrics listener (not the webhook port)."""
        return f"http://127.0.0.1:{self.app.state.metrics_port}/metrics"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# ---- a real SMTP server on loopback ------------------------------------------------------------


class _Collect:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    """aiosmtpd listening on loopback; `messages` holds every accepted email."""

    controller: Controller
    handler: _Collect

    @property
    def url(self) -> str:
        # A loopback test server without TLS: the explicit, loopback-only plaintext opt-out.
        return f"smtp://127.0.0.1:{self.controller.port}?starttls=false"

    @property
    def messages(self) -> list[EmailMessage]:
        return self.handler.messages


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = _Collect()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer(controller, handler)
    finally:
        controller.stop()


# ---- the pump: sensors -> runs, like the daemon -------------------------------------------------

SENSORS = (
    (webhook_events_sensor, webhook_events_job),
    (dunning_sensor, dunning_step_job),
    (notification_outbox_sensor, notification_delivery_job),
)


@dataclass
class Harness:
    """Sandbox + receiver + database + SMTP, with the project's sensors and jobs."""

    sandbox: SandboxHandle
    client: stripe.StripeClient
    db_url: str
    receiver: ReceiverServer
    smtp: SmtpServer
    secret: str
    instance: dg.DagsterInstance
    run_keys: set[str] = field(default_factory=set)
    cursors: dict[str, str | None] = field(default_factory=dict)
    runs: list[tuple[str, str, bool]] = field(default_factory=list)

    def resources(self) -> dict[str, Any]:
        return {
            "billing_db": BillingDatabase(url=self.db_url),
            "stripe": StripeResource(
                api_key=API_KEY, api_base=self.sandbox.url, max_network_retries=0
            ),
            "email": EmailResource(smtp_url=self.smtp.url, sender="Billing <billing@example.com>"),
        }

    def drain(self, timeout: float = 10.0) -> None:
        assert self.sandbox.state.webhooks is not None
        assert self.sandbox.state.webhooks.drain(timeout), "webhook deliveries did not drain"

    def pump(self, max_rounds: int = 30, only: tuple[str, ...] | None = None) -> int:
        """Evaluate every sensor and run what it requests until nothing new is requested."""
        launched = 0
        for _ in range(max_rounds):
            new = 0
            for sensor, job in SENSORS:
                if only and sensor.name not in only:
                    continue
                with dg.build_sensor_context(
                    cursor=self.cursors.get(sensor.name), resources=self.resources()
                ) as context:
                    result = sensor(context)
                if isinstance(result, dg.SkipReason) or result is None:
                    continue
                assert isinstance(result, dg.SensorResult)
                self.cursors[sensor.name] = result.cursor
                for request in result.run_requests or []:
                    assert request.run_key
                    if request.run_key in self.run_keys:
                        continue  # the daemon skips a run_key it has launched before
                    self.run_keys.add(request.run_key)
                    outcome = job.execute_in_process(
                        run_config=request.run_config,
                        instance=self.instance,
                        resources=self.resources(),
                        tags=request.tags,
                        raise_on_error=False,
                    )
                    self.runs.append((job.name, request.run_key, outcome.success))
                    new += 1
            launched += new
            if new == 0:
                return launched
        raise AssertionError("the pump did not settle")

    def settle(self, timeout: float = 10.0) -> None:
        """Wait for deliveries, then run sensors and jobs until quiet (twice: runs emit mail)."""
        self.drain(timeout)
        self.pump()

    # ---- Stripe and tenant set-up --------------------------------------------------------------

    def catalog(self) -> dict[str, str]:
        c = self.client
        prod = c.v1.products.create({"name": "Pro"})
        meter = c.v1.billing.meters.create(
            {
                "display_name": "Queries",
                "event_name": "queries",
                "default_aggregation": {"formula": "sum"},
                "event_time_window": "day",
            }
        )
        base = c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "unit_amount": 9900,
                "recurring": {"interval": "month"},
                "lookup_key": "pro_base",
            }
        )
        usage = c.v1.prices.create(
            {
                "product": prod.id,
                "currency": "usd",
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "lookup_key": "pro_queries",
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
                "tiers": [
                    {"up_to": 100000, "unit_amount": 0},
                    {"up_to": "inf", "unit_amount_decimal": Decimal("0.08")},
                ],
            }
        )
        return {"base": base.id, "usage": usage.id, "meter": meter.id}

    def tenant(
        self,
        tenant_id: str,
        *,
        card: str | None = "pm_card_visa",
        trial_days: int | None = None,
        trial_behavior: str | None = None,
        metered: bool = False,
        on_clock: bool = True,
    ) -> tuple[stripe.Customer, stripe.Subscription, str]:
        """A customer (on a test clock at T0 unless told otherwise) with a Pro subscription,
        and its tenant row."""
        c = self.client
        prices = self.catalog()
        clock_id = ""
        params_c: dict[str, Any] = {
            "email": f"{tenant_id}@tenant.example",
            "metadata": {"tenant_id": tenant_id},
        }
        if on_clock:
            clock_id = c.v1.test_helpers.test_clocks.create({"frozen_time": T0}).id
            params_c["test_clock"] = clock_id
        customer = c.v1.customers.create(params_c)  # type: ignore[arg-type]
        if card:
            pm = c.v1.payment_methods.attach(card, {"customer": customer.id})
            c.v1.customers.update(
                customer.id, {"invoice_settings": {"default_payment_method": pm.id}}
            )
        query(
            self.db_url,
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id) "
            "VALUES (%s, %s, %s, 'pro', %s)",
            (tenant_id, f"Tenant {tenant_id}", f"{tenant_id}@tenant.example", customer.id),
        )
        items: list[dict[str, Any]] = [{"price": prices["base"]}]
        if metered:
            items.append({"price": prices["usage"]})
        params: dict[str, Any] = {"customer": customer.id, "items": items}
        if trial_days:
            params["trial_period_days"] = trial_days
        if trial_behavior:
            params["trial_settings"] = {"end_behavior": {"missing_payment_method": trial_behavior}}
        subscription = c.v1.subscriptions.create(params)  # type: ignore[arg-type]
        return customer, subscription, clock_id

    def tenant_row(self, tenant_id: str) -> dict[str, Any]:
        rows = query(self.db_url, "SELECT * FROM tenants WHERE tenant_id = %s", (tenant_id,))
        assert rows, tenant_id
        return rows[0]

    # ---- the sandbox's delivery machinery -----------------------------------------------------

    def endpoint_id(self) -> str:
        return str(self.client.v1.webhook_endpoints.list().data[0].id)

    def deliveries_paused(self, paused: bool) -> None:
        """Disable the endpoint (events happen but are never delivered: missed webhooks)."""
        self.client.v1.webhook_endpoints.update(self.endpoint_id(), {"disabled": paused})

    def event_ids(self, event_type: str) -> list[str]:
        """Ids of events of this type, oldest first."""
        events = self.client.v1.events.list({"type": event_type, "limit": 100}).data
        return [e.id for e in reversed(events)]

    def redeliver(self, *event_ids: str) -> None:
        """Have the sandbox deliver these events again (as Stripe does on retries)."""
        state = self.sandbox.state
        assert state.webhooks is not None
        endpoint_id = self.endpoint_id()
        with state.lock:
            endpoint = state.table("webhook_endpoint")[endpoint_id]
            events = [state.table("event")[eid] for eid in event_ids]
        for event in events:
            state.webhooks.enqueue(event, [endpoint])
            assert state.webhooks.drain(10)

    def signed(self, event_id: str) -> tuple[bytes, str]:
        """The exact body the sandbox would deliver for this event, and a fresh signature."""
        from billing_sandbox.stripe.resources.events import render_event
        from billing_sandbox.stripe.webhooks import sign

        with self.sandbox.state.lock:
            body = json.dumps(render_event(self.sandbox.state.table("event")[event_id]), indent=2)
        return body.encode(), sign(body, self.secret)

    def emails(self, to: str | None = None) -> list[EmailMessage]:
        return [m for m in self.smtp.messages if to is None or m["To"] == to]


def register_endpoint(client: stripe.StripeClient, url: str) -> str:
    """A Stripe webhook endpoint for every event type; returns its signing secret."""
    endpoint = client.v1.webhook_endpoints.create({"url": url, "enabled_events": ["*"]})
    assert endpoint.secret
    return endpoint.secret


@pytest.fixture
def harness(
    stripe_sandbox: SandboxHandle,
    stripe_client: stripe.StripeClient,
    billing_db_url: str,
    smtp_server: SmtpServer,
    tmp_path: Any,
) -> Iterator[Harness]:
    """Everything wired: sandbox -> signed deliveries -> receiver -> queue -> sensors -> effects."""
    # The endpoint's secret exists once the endpoint exists, and the endpoint needs the
    # receiver's URL: pick the port, register, then start the receiver with the secret.
    port = free_port()
    secret = register_endpoint(stripe_client, f"http://127.0.0.1:{port}/webhooks/stripe")
    receiver = ReceiverServer(
        ReceiverConfig(database_url=billing_db_url, secrets=[secret]), port=port
    )
    instance = dg.DagsterInstance.ephemeral(tempdir=str(tmp_path))
    try:
        yield Harness(
            sandbox=stripe_sandbox,
            client=stripe_client,
            db_url=billing_db_url,
            receiver=receiver,
            smtp=smtp_server,
            secret=secret,
            instance=instance,
        )
    finally:
        receiver.stop()
        instance.dispose()
