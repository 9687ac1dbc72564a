"""The receiver at its edges: every malformed or forged request is a 4xx that stores nothing;
a database outage is a 503 and the sandbox's retry later lands the event exactly once."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle, Settings

from billing_pipelines.lib.webhooks.signature import expected_signature
from billing_pipelines.webhooks import ReceiverConfig
from billing_pipelines_tests.webhook_harness import (
    ReceiverServer,
    free_port,
    query,
    register_endpoint,
)

SECRET_OLD = "whsec_old_rotating_secret_value"
SECRET_NEW = "whsec_new_rotating_secret_value"


def _event(event_id: str = "evt_test_1", event_type: str = "customer.created") -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "api_version": stripe.api_version,
            "livemode": False,
            "data": {"object": {"id": "cus_1", "object": "customer"}},
        }
    ).encode()


def _sig(body: bytes, secret: str = SECRET_NEW, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    return f"t={t},v1={expected_signature(body, t, secret)}"


@pytest.fixture
def receiver(billing_db_url: str) -> Iterator[ReceiverServer]:
    server = ReceiverServer(
        ReceiverConfig(
            database_url=billing_db_url,
            secrets=[SECRET_NEW, SECRET_OLD],
            max_body_bytes=64 * 1024,
        )
    )
    yield server
    server.stop()


def _count(url: str) -> int:
    return int(query(url, "SELECT count(*) AS n FROM webhook_events")[0]["n"])


def _post(receiver: ReceiverServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(receiver.webhook_url, content=body, headers=headers, timeout=10)


BODY = _event()
Headers = Callable[[], dict[str, str]]


def _now() -> int:
    return int(time.time())


# Headers are built when the test runs: a signature made at import time would be stale by then.
REJECTIONS: list[tuple[str, bytes, Headers, int, str | None]] = [
    ("missing header", BODY, lambda: {}, 400, "missing_signature"),
    (
        "bad signature",
        BODY,
        lambda: {"Stripe-Signature": _sig(BODY, "whsec_wrong")},
        400,
        "bad_signature",
    ),
    (
        "tampered body",
        BODY.replace(b"customer.created", b"invoice.paid"),
        lambda: {"Stripe-Signature": _sig(BODY)},
        400,
        "bad_signature",
    ),
    (
        "stale timestamp",
        BODY,
        lambda: {"Stripe-Signature": _sig(BODY, t=_now() - 3600)},
        400,
        "timestamp_too_old",
    ),
    (
        "future timestamp",
        BODY,
        lambda: {"Stripe-Signature": _sig(BODY, t=_now() + 3600)},
        400,
        "timestamp_in_future",
    ),
    ("malformed json", b"{not json", lambda: {"Stripe-Signature": _sig(b"{not json")}, 400, None),
    (
        "not an event",
        b'{"id": "cus_1"}',
        lambda: {"Stripe-Signature": _sig(b'{"id": "cus_1"}')},
        400,
        "malformed_event",
    ),
    (
        "oversized",
        b"x" * (65 * 1024),
        lambda: {"Stripe-Signature": "t=1,v1=00"},
        413,
        "body_too_large",
    ),
    ("garbled header", BODY, lambda: {"Stripe-Signature": "v1"}, 400, "malformed_signature"),
]


@pytest.mark.parametrize(
    ("body", "make_headers", "status", "reason"),
    [r[1:] for r in REJECTIONS],
    ids=[r[0] for r in REJECTIONS],
)
def test_rejected_requests_store_nothing(
    receiver: ReceiverServer,
    billing_db_url: str,
    body: bytes,
    make_headers: Headers,
    status: int,
    reason: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = make_headers()
    with caplog.at_level(logging.DEBUG, logger="billing_pipelines.webhooks"):
        response = _post(receiver, body, headers)
    assert response.status_code == status
    assert _count(billing_db_url) == 0
    if reason:
        metrics = httpx.get(receiver.metrics_url).text
        assert f'billing_webhook_requests_rejected_total{{reason="{reason}"}} 1.0' in metrics
    # Never a secret or a signature in the logs or the answer.
    signature = headers.get("Stripe-Signature", "")
    text = caplog.text + response.text
    assert SECRET_NEW not in text and SECRET_OLD not in text
    if "v1=" in signature and len(signature.split("v1=")[1]) > 8:
        assert signature.split("v1=")[1] not in text


def test_chunked_oversized_body_without_length_is_refused(
    receiver: ReceiverServer, billing_db_url: str
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(80):
            yield b"y" * 1024

    response = httpx.post(
        receiver.webhook_url, content=chunks(), headers={"Stripe-Signature": _sig(b"")}
    )
    assert response.status_code == 413
    assert _count(billing_db_url) == 0


def test_valid_event_stored_once_with_either_rotating_secret(
    receiver: ReceiverServer, billing_db_url: str
) -> None:
    first = _post(receiver, BODY, {"Stripe-Signature": _sig(BODY, SECRET_OLD)})
    again = _post(receiver, BODY, {"Stripe-Signature": _sig(BODY, SECRET_NEW)})
    assert (first.status_code, first.json()) == (200, {"received": True, "duplicate": False})
    assert (again.status_code, again.json()) == (200, {"received": True, "duplicate": True})
    rows = query(
        billing_db_url, "SELECT event_id, event_type, object_id, status FROM webhook_events"
    )
    assert rows == [
        {
            "event_id": "evt_test_1",
            "event_type": "customer.created",
            "object_id": "cus_1",
            "status": "pending",
        }
    ]
    assert httpx.get(f"{receiver.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{receiver.url}/readyz").status_code == 200
    metrics = httpx.get(receiver.metrics_url).text
    assert 'billing_webhook_events_accepted_total{event_type="customer.created"} 1.0' in metrics
    assert "billing_webhook_events_duplicate_total 1.0" in metrics
    assert 'billing_webhook_ack_seconds_count{outcome="accepted"} 1.0' in metrics


def _rejections(receiver: ReceiverServer, reason: str) -> str | None:
    """The receiver's rejected-requests counter line for one reason, if any."""
    metrics = httpx.get(receiver.metrics_url).text
    prefix = f'billing_webhook_requests_rejected_total{{reason="{reason}"}} '
    return next((line for line in metrics.splitlines() if line.startswith(prefix)), None)


def test_old_secret_after_the_rotation_window_is_refused(billing_db_url: str) -> None:
    """Once Stripe's rotation window ends the old secret is removed: it no longer verifies."""
    server = ReceiverServer(ReceiverConfig(database_url=billing_db_url, secrets=[SECRET_NEW]))
    try:
        old = _post(server, BODY, {"Stripe-Signature": _sig(BODY, SECRET_OLD)})
        assert old.status_code == 400
        assert _count(billing_db_url) == 0
        assert _rejections(server, "bad_signature") == (
            'billing_webhook_requests_rejected_total{reason="bad_signature"} 1.0'
        )
        new = _post(server, BODY, {"Stripe-Signature": _sig(BODY, SECRET_NEW)})
        assert (new.status_code, new.json()) == (200, {"received": True, "duplicate": False})
        assert _count(billing_db_url) == 1
    finally:
        server.stop()


def test_replay_of_an_accepted_event(billing_db_url: str) -> None:
    """The same captured request sent again: a duplicate within 5 minutes, refused after."""
    now = [float(_now())]
    server = ReceiverServer(
        ReceiverConfig(database_url=billing_db_url, secrets=[SECRET_NEW], clock=lambda: now[0])
    )
    try:
        captured = {"Stripe-Signature": _sig(BODY, t=int(now[0]))}
        first = _post(server, BODY, captured)
        assert (first.status_code, first.json()) == (200, {"received": True, "duplicate": False})
        # The consumer handled it; a replay must not put it back in the queue.
        query(billing_db_url, "UPDATE webhook_events SET status = 'processed'")
        now[0] += 120  # replayed inside the tolerance: acknowledged as a duplicate
        again = _post(server, BODY, captured)
        assert (again.status_code, again.json()) == (200, {"received": True, "duplicate": True})
        now[0] += 240  # the signature's timestamp is now 6 minutes old
        late = _post(server, BODY, captured)
        assert late.status_code == 400
        assert _rejections(server, "timestamp_too_old") == (
            'billing_webhook_requests_rejected_total{reason="timestamp_too_old"} 1.0'
        )
        rows = query(billing_db_url, "SELECT event_id, status FROM webhook_events")
        assert rows == [{"event_id": "evt_test_1", "status": "processed"}]  # stored, handled once
    finally:
        server.stop()


def test_events_are_acknowledged_as_queued_and_left_for_the_sensors_to_handle(
    receiver: ReceiverServer, billing_db_url: str
) -> None:
    # Acknowledging fast means storing and answering, not handling: every event is answered
    # as received and is still pending in the queue afterwards. How fast is measured in
    # bench/webhook_receiver.py, not asserted here.
    ids = [f"evt_queued_{i}" for i in range(50)]
    with httpx.Client() as client:
        for event_id in ids:
            body = _event(event_id)
            response = client.post(
                receiver.webhook_url, content=body, headers={"Stripe-Signature": _sig(body)}
            )
            assert (response.status_code, response.json()) == (
                200,
                {"received": True, "duplicate": False},
            )
    rows = query(billing_db_url, "SELECT event_id, status FROM webhook_events")
    assert sorted((r["event_id"], r["status"]) for r in rows) == sorted(
        (event_id, "pending") for event_id in ids
    )


# ---- the database goes away ---------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP forwarder we can switch off (refuse and cut every connection) and on."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_database_down_answers_503_and_the_retry_lands_exactly_once(
    stripe_sandbox: SandboxHandle, stripe_client: stripe.StripeClient, billing_db_url: str
) -> None:
    parts = urlsplit(billing_db_url)
    assert parts.hostname and parts.port
    proxy = TcpProxy(parts.hostname, parts.port)
    via_proxy = billing_db_url.replace(f":{parts.port}/", f":{proxy.port}/")
    port = free_port()
    secret = register_endpoint(stripe_client, f"http://127.0.0.1:{port}/webhooks/stripe")
    receiver = ReceiverServer(
        ReceiverConfig(database_url=via_proxy, secrets=[secret], pool_timeout_seconds=0.5),
        port=port,
    )
    # Stripe-like retries, compressed: the outage lasts longer than the first retry.
    stripe_sandbox.state.settings = Settings(webhook_backoff_seconds=[0.3, 0.6, 1.2, 2.4, 4.8])
    try:
        assert httpx.get(f"{receiver.url}/readyz").status_code == 200  # pool connected
        proxy.down()
        customer = stripe_client.v1.customers.create({"email": "outage@x.io"})
        dispatcher = stripe_sandbox.state.webhooks
        assert dispatcher is not None
        deadline = time.monotonic() + 10
        while len(dispatcher.deliveries) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [d.status for d in dispatcher.deliveries[:2]] == [503, 503]
        assert httpx.get(f"{receiver.url}/readyz").status_code == 503
        assert httpx.get(f"{receiver.url}/healthz").status_code == 200  # alive, not ready
        proxy.up()
        assert dispatcher.drain(15)
        statuses = [d.status for d in dispatcher.deliveries]
        assert statuses[-1] == 200 and set(statuses[:-1]) == {503}
        assert not dispatcher.given_up
        rows = query(billing_db_url, "SELECT event_id, event_type FROM webhook_events")
        event = stripe_client.v1.events.list({"type": "customer.created"}).data[0]
        assert event.data.object.id == customer.id
        assert rows == [{"event_id": event.id, "event_type": "customer.created"}]
        metrics = httpx.get(receiver.metrics_url).text
        assert 'billing_webhook_requests_rejected_total{reason="database_unavailable"}' in metrics
    finally:
        receiver.stop()
        proxy.down()
