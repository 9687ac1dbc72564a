"""The receiver's edges under hostile clients: a non-ASCII signature and a client that hangs up
mid-body are plain rejections (no 500, no traceback, nothing stored); metrics are not served on
the webhook listener."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from billing_pipelines.lib.webhooks.signature import expected_signature
from billing_pipelines.webhooks import ReceiverConfig
from billing_pipelines_tests.webhook_harness import ReceiverServer, query

SECRET = "whsec_edges_secret_value"


class _Records(logging.Handler):
    """Every log record of the receiver and of uvicorn, to look for tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.exc_info or r.exc_text]


@pytest.fixture
def logs() -> Iterator[_Records]:
    handler = _Records()
    # uvicorn's loggers do not propagate to the root logger: listen on each one directly.
    names = ("uvicorn", "uvicorn.error", "billing_pipelines", "")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in names:
        logging.getLogger(name).removeHandler(handler)


@pytest.fixture
def receiver(billing_db_url: str) -> Iterator[ReceiverServer]:
    server = ReceiverServer(ReceiverConfig(database_url=billing_db_url, secrets=[SECRET]))
    yield server
    server.stop()


def _body(event_id: str) -> bytes:
    return json.dumps(
        {"id": event_id, "object": "event", "type": "invoice.paid", "livemode": False, "data": {}}
    ).encode()


def _metric(receiver: ReceiverServer, reason: str) -> float:
    prefix = f'billing_webhook_requests_rejected_total{{reason="{reason}"}} '
    for line in httpx.get(receiver.metrics_url, timeout=5).text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


@pytest.mark.parametrize(
    "v1",
    [
        "é".encode() * 32,  # UTF-8 bytes, decoded by the server as latin-1 text
        b"\xff" * 64,
        b"0" * 63 + b"\xe9",
    ],
    ids=["utf8", "high-bytes", "one-byte-off"],
)
def test_non_ascii_v1_signature_is_a_plain_400_with_nothing_stored(
    receiver: ReceiverServer, billing_db_url: str, logs: _Records, v1: bytes
) -> None:
    body = _body("evt_non_ascii")
    t = int(time.time())
    header = f"t={t},v1=".encode() + v1
    response = httpx.post(
        receiver.webhook_url, content=body, headers={b"Stripe-Signature": header}, timeout=10
    )
    assert (response.status_code, response.json()) == (
        400,
        {"error": "no signature matches any configured secret"},
    )
    assert _metric(receiver, "bad_signature") == 1.0
    assert query(billing_db_url, "SELECT count(*) AS n FROM webhook_events")[0]["n"] == 0
    assert logs.tracebacks() == []
    # The same event correctly signed is still accepted afterwards.
    good = f"t={t},v1={expected_signature(body, t, SECRET)}"
    ok = httpx.post(receiver.webhook_url, content=body, headers={"Stripe-Signature": good})
    assert ok.status_code == 200


@pytest.mark.parametrize("sent", [0, 1, 700], ids=["no-body", "one-byte", "part-of-body"])
def test_client_disconnecting_mid_body_logs_no_traceback_and_stores_nothing(
    receiver: ReceiverServer, billing_db_url: str, logs: _Records, sent: int
) -> None:
    body = _body("evt_cut_short") + b" " * 2000
    t = int(time.time())
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Stripe-Signature: t={t},v1={expected_signature(body, t, SECRET)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(head + body[:sent])
        time.sleep(0.2)  # let the server start reading the body before the hang-up
    deadline = time.monotonic() + 10
    while _metric(receiver, "client_disconnected") < 1.0:
        assert time.monotonic() < deadline, f"no disconnect recorded; logs: {logs.tracebacks()}"
        time.sleep(0.05)
    assert _metric(receiver, "client_disconnected") == 1.0
    assert logs.tracebacks() == []
    assert query(billing_db_url, "SELECT count(*) AS n FROM webhook_events")[0]["n"] == 0
    # The receiver still serves the next sender.
    ok = httpx.post(
        receiver.webhook_url,
        content=body,
        headers={"Stripe-Signature": f"t={t},v1={expected_signature(body, t, SECRET)}"},
    )
    assert ok.status_code == 200


def test_metrics_are_not_served_on_the_webhook_listener(receiver: ReceiverServer) -> None:
    assert httpx.get(f"{receiver.url}/metrics").status_code == 404
    own = httpx.get(receiver.metrics_url)
    assert own.status_code == 200
    assert "billing_webhook_requests_rejected_total" in own.text
    assert receiver.metrics_url.startswith("http://127.0.0.1:")
    assert f":{receiver.port}/" not in receiver.metrics_url
