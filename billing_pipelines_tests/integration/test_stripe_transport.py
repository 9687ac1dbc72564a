"""The project's Stripe transport: environment proxies honoured, network failures as the SDK's."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from billing_pipelines.lib.stripe import client as stripe_api

API_HOST = "api.billing-transport-test.invalid"


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself with an empty list, noting its target;
    gzip-compressed when the client accepts it, as api.stripe.com does."""

    seen: list[str] = []
    compressed: list[bool] = []

    def do_GET(self) -> None:
        _Proxy.seen.append(self.path)
        body = json.dumps({"object": "list", "data": [], "has_more": False, "url": "/v1/x"})
        raw = body.encode()
        compressed = "gzip" in self.headers.get("Accept-Encoding", "")
        _Proxy.compressed.append(compressed)
        if compressed:
            raw = gzip.compress(raw)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Request-Id", "req_proxy")
        if compressed:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Proxy.seen, _Proxy.compressed = [], []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _clear_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_requests_go_through_the_proxy_the_environment_names_and_accept_gzip(
    proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    client = stripe_api.make_client(
        "sk_test_transport", api_base=f"http://{API_HOST}", max_network_retries=0
    )
    first = client.v1.customers.list({"limit": 3})
    client.v1.customers.list({"limit": 4})
    # The answers came compressed (the client asks for it) and were decoded.
    assert _Proxy.compressed == [True, True]
    assert first.data == [] and first.has_more is False
    # A forward proxy receives the absolute URL (the host itself does not resolve at all).
    assert _Proxy.seen == [
        f"http://{API_HOST}/v1/customers?limit=3",
        f"http://{API_HOST}/v1/customers?limit=4",
    ]


def test_a_host_in_no_proxy_is_reached_directly(
    proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", API_HOST)
    client = stripe_api.make_client(
        "sk_test_transport", api_base=f"http://{API_HOST}", max_network_retries=0
    )
    # Directly, the host does not resolve: a connection error, and the proxy saw nothing.
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.list()
    assert _Proxy.seen == []


def test_a_refused_connection_is_the_sdks_retryable_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_proxy_env(monkeypatch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    client = stripe_api.make_client(
        "sk_test_transport", api_base=f"http://127.0.0.1:{port}", max_network_retries=0
    )
    with pytest.raises(stripe.APIConnectionError) as caught:
        client.v1.customers.create({"name": "n"})
    # As the SDK's own transport marks it: the SDK may retry it (with the same idempotency key).
    assert caught.value.should_retry is True
    assert "Unexpected error communicating with Stripe" in str(caught.value)
    assert "NewConnectionError" in str(caught.value)
