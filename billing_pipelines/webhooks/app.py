"""The Stripe webhook receiver: verify -> store once by event id -> 2xx, nothing more.

Processing happens later in Dagster (a sensor turns queued rows into runs), so the answer is
fast and never depends on Stripe or on business logic. What the receiver promises:

- a request without a valid signature (any configured secret), outside the timestamp window
  in either direction, too large, or not a Stripe event gets a 4xx and stores nothing;
- a valid event is stored once (`ON CONFLICT (event_id) DO NOTHING`) and acknowledged 200,
  a duplicate is acknowledged 200 too;
- when the database cannot take the row it answers 503, so Stripe retries: it never
  acknowledges an event it did not store;
- secrets and signatures never reach logs, errors or metrics;
- Prometheus metrics are served on their own listener (loopback by default), never on the
  public webhook one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.monitoring.collector import BillingStateCollector
from billing_pipelines.lib.webhooks import queue as webhook_queue
from billing_pipelines.lib.webhooks.signature import SignatureError, verify

log = logging.getLogger("billing_pipelines.webhooks")

WEBHOOK_PATH = "/webhooks/stripe"


@dataclass
class ReceiverConfig:
    """Everything the receiver needs; `secrets` are excluded from repr."""

    database_url: str = field(repr=False)
    secrets: Sequence[str] = field(repr=False)
    tolerance_seconds: int = 300
    max_body_bytes: int = 512 * 1024
    # The largest request head (header names and values) the app accepts: 431 above it. The
    # server's parser bounds what it buffers before that (see webhooks/server.py).
    max_header_bytes: int = 16 * 1024
    pool_min_size: int = 2
    pool_max_size: int = 10
    # How long a request waits for a database connection before answering 503.
    pool_timeout_seconds: float = 2.0
    clock: Callable[[], float] = time.time
    # Prometheus metrics listener (its own port, loopback by default); None: not served.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None


class Metrics:
    """Prometheus metrics of one receiver (own registry: several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = Counter(
            "billing_webhook_events_accepted",
            "Verified Stripe events stored in the queue for the first time.",
            ["event_type"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "billing_webhook_events_duplicate",
            "Verified Stripe events already in the queue (acknowledged, not stored again).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "billing_webhook_requests_rejected",
            "Requests refused, by reason (nothing stored).",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "billing_webhook_ack_seconds",
            "Time from request start to the response, by outcome.",
            ["outcome"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )


class _Reject(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > cap:
                raise _Reject(413, "body_too_large", f"body larger than {cap} bytes")
        except ValueError:
            raise _Reject(400, "bad_content_length", "invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _Reject(413, "body_too_large", f"body larger than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _BoundedHeaders:
    """ASGI wrapper: a request whose headers exceed the bound gets 431 before any route runs."""

    def __init__(self, app: Any, max_header_bytes: int, rejected: Counter) -> None:
        self.app, self.max_header_bytes, self.rejected = app, max_header_bytes, rejected

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_header_bytes:
                self.rejected.labels("headers_too_large").inc()
                response = JSONResponse(
                    {"error": f"request headers larger than {self.max_header_bytes} bytes"},
                    status_code=431,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: ReceiverConfig) -> Starlette:
    """The receiver as an ASGI app; the pool opens on startup (without waiting for the DB)."""
    if not config.secrets:
        raise BillingConfigError("STRIPE_WEBHOOK_SECRETS is not set: the receiver cannot verify")
    metrics = Metrics()
    # Payments, dunning, meter pushes and queue work happen in Dagster's run processes: their
    # metrics are read from the database at scrape time, beside the receiver's own.
    metrics.registry.register(BillingStateCollector.for_url(config.database_url))

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        # Test each connection as it is handed out (one round trip). One dead connection means
        # the server restarted and every idle one is dead too: test them all at once, so the
        # request waits for a new connection instead of backing off once per dead socket (and
        # answering 503 although the database is back).
        try:
            await AsyncConnectionPool.check_connection(conn)
        except psycopg.Error:
            await pool.check()
            raise

    pool = AsyncConnectionPool(
        config.database_url,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        timeout=config.pool_timeout_seconds,
        open=False,
        check=check,
        kwargs={"autocommit": True, "connect_timeout": max(1, int(config.pool_timeout_seconds))},
    )
    secrets = tuple(config.secrets)

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        outcome = "rejected"
        try:
            body = await _read_capped(request, config.max_body_bytes)
            try:
                verify(
                    body,
                    request.headers.get("stripe-signature"),
                    secrets,
                    now=config.clock(),
                    tolerance_seconds=config.tolerance_seconds,
                )
            except SignatureError as exc:
                raise _Reject(400, exc.reason, str(exc)) from None
            try:
                event = webhook_queue.parse_event(body)
            except webhook_queue.MalformedEventError as exc:
                raise _Reject(400, "malformed_event", str(exc)) from None
            try:
                async with pool.connection() as conn:
                    cursor = await conn.execute(
                        webhook_queue.INSERT_SQL, webhook_queue.insert_params(event, "webhook")
                    )
                    row = await cursor.fetchone()
            except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning(
                    "webhook %s not stored: database unavailable (%s)",
                    event.event_id,
                    type(exc).__name__,
                )
                raise _Reject(503, "database_unavailable", "database unavailable") from None
            except psycopg.DataError:
                raise _Reject(400, "malformed_event", "payload rejected by the database") from None
            if row is None:
                outcome = "duplicate"
                metrics.duplicates.inc()
            else:
                outcome = "accepted"
                metrics.accepted.labels(event.event_type).inc()
            log.debug("webhook %s %s %s", event.event_id, event.event_type, outcome)
            return JSONResponse({"received": True, "duplicate": row is None})
        except ClientDisconnect:
            # The sender hung up mid-body: nothing was stored and nobody reads an answer. One
            # line, no traceback (Stripe retries an event it got no 2xx for).
            metrics.rejected.labels("client_disconnected").inc()
            log.info("webhook request abandoned: the client disconnected before the body ended")
            return Response(status_code=400)
        except _Reject as rej:
            outcome = "unavailable" if rej.status == 503 else "rejected"
            metrics.rejected.labels(rej.reason).inc()
            if rej.status != 503:
                log.info("webhook rejected: %s", rej.reason)
            headers = {"Retry-After": "5"} if rej.status == 503 else None
            return JSONResponse({"error": rej.message}, status_code=rej.status, headers=headers)
        finally:
            metrics.latency.labels(outcome).observe(time.perf_counter() - started)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            async with pool.connection(timeout=1.0) as conn:
                await conn.execute("SELECT 1")
        except (PoolTimeout, psycopg.Error):
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=False)
        listener = None
        if config.metrics_port is not None:
            # prometheus_client's own small HTTP server, on its own interface and port.
            listener, _thread = start_http_server(
                config.metrics_port, addr=config.metrics_host, registry=metrics.registry
            )
            app.state.metrics_port = listener.server_port
        try:
            yield
        finally:
            if listener is not None:
                listener.shutdown()
                listener.server_close()
            await pool.close()

    app = Starlette(
        middleware=[
            Middleware(
                _BoundedHeaders,
                max_header_bytes=config.max_header_bytes,
                rejected=metrics.rejected,
            )
        ],
        routes=[
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.pool = pool
    return app


def app_from_environment() -> Starlette:
    """uvicorn factory: settings are read when the worker starts, never at import."""
    from billing_pipelines.settings import load_settings

    settings = load_settings()
    return create_app(
        ReceiverConfig(
            database_url=settings.require_database_url(),
            secrets=settings.webhook_secrets(),
            tolerance_seconds=settings.webhook_tolerance_seconds,
            max_body_bytes=settings.webhook_max_body_bytes,
            max_header_bytes=settings.webhook_max_header_bytes,
            metrics_host=settings.metrics_host,
            metrics_port=settings.metrics_port or None,
        )
    )
