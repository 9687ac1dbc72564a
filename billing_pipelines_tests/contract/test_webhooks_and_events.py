"""Webhook delivery (signature, retries, chaos), Event.list filters, snapshot/restore."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
import uvicorn
from billing_sandbox.ports import free_port
from billing_sandbox.stripe import Chaos, SandboxHandle, SandboxState, run_in_thread
from billing_sandbox.stripe.webhooks import sign
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines_tests.support import API_KEY, present


class Receiver:
    """A tiny webhook endpoint that fails the first `fail_first` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[tuple[bytes, str]] = []
        self.calls = 0
        self.fail_first = fail_first

        async def hook(request: Request) -> Response:
            self.calls += 1
            if self.calls <= self.fail_first:
                return Response("boom", status_code=500)
            self.bodies.append((await request.body(), request.headers["stripe-signature"]))
            return Response("ok")

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/hook"
        cfg = uvicorn.Config(
            Starlette(routes=[Route("/hook", hook, methods=["POST"])]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            threading.Event().wait(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.stop()


def test_signed_delivery_with_retries_verifies(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient, receiver: Receiver
):
    ep = stripe_client.v1.webhook_endpoints.create(
        {"url": receiver.url, "enabled_events": ["customer.created"]}
    )
    assert ep.secret and ep.secret.startswith("whsec_")
    cus = stripe_client.v1.customers.create({"email": "w@x.io"})
    stripe_client.v1.products.create({"name": "not subscribed"})
    assert stripe_sandbox.state.webhooks is not None
    assert stripe_sandbox.state.webhooks.drain(5)
    assert receiver.calls == 3  # 500, 500, then 200
    assert len(receiver.bodies) == 1
    body, header = receiver.bodies[0]
    event = stripe.Webhook.construct_event(body, header, ep.secret)
    assert event.type == "customer.created" and event.data.object.id == cus.id
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b"w@x.io", b"evil@x.io"), header, ep.secret)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, header, "whsec_other")
    assert stripe_client.v1.events.retrieve(event.id).pending_webhooks == 0


def test_sign_matches_sdk_verification():
    payload = '{"id": "evt_1"}'
    header = sign(payload, "whsec_abc")
    assert stripe.WebhookSignature.verify_header(payload, header, "whsec_abc", tolerance=300)


def test_chaos_duplicates_deliveries():
    r = Receiver()
    h = run_in_thread(webhook_chaos=Chaos(duplicate_rate=1.0, max_delay_seconds=0.05), seed=1)
    try:
        c = stripe_api.make_client(API_KEY, api_base=h.url)
        c.v1.webhook_endpoints.create({"url": r.url, "enabled_events": ["*"]})
        for i in range(3):
            c.v1.customers.create({"name": f"c{i}"})
        assert h.state.webhooks is not None and h.state.webhooks.drain(5)
        ids = [stripe.Webhook.construct_event(b, s, _secret(h)).id for b, s in r.bodies]
        assert len(ids) == 6 and len(set(ids)) == 3
    finally:
        h.stop()
        r.stop()


def _secret(h: SandboxHandle) -> str:
    with h.state.lock:
        return str(h.state.all("webhook_endpoint")[0]["secret"])


def test_event_list_filters_and_previous_attributes(stripe_client: stripe.StripeClient):
    c = stripe_client
    cus = c.v1.customers.create({"email": "a@x.io", "metadata": {"plan": "starter"}})
    c.v1.customers.update(cus.id, {"metadata": {"plan": "pro"}})
    upd = c.v1.events.list({"type": "customer.updated"}).data
    assert len(upd) == 1
    assert upd[0].data.object.metadata["plan"] == "pro"
    assert present(upd[0].data.previous_attributes)["metadata"]["plan"] == "starter"
    created = c.v1.events.list({"types": ["customer.created", "customer.updated"]}).data
    assert [e.type for e in created] == ["customer.updated", "customer.created"]
    first = created[-1].created
    assert c.v1.events.list({"created": {"gte": first}, "type": "customer.*"}).data
    assert not c.v1.events.list({"created": {"gt": first + 10_000}}).data


def test_snapshot_restore_roundtrip(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient, tmp_path: Any
):
    cus = stripe_client.v1.customers.create({"email": "s@x.io"})
    path = tmp_path / "stripe.snap"
    stripe_sandbox.state.snapshot(path)
    fresh = SandboxState()
    fresh.restore(path)
    h = run_in_thread(state=fresh)
    try:
        c = stripe_api.make_client(API_KEY, api_base=h.url)
        assert c.v1.customers.retrieve(cus.id).email == "s@x.io"
    finally:
        h.stop()
