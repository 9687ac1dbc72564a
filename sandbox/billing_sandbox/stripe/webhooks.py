"""Webhook delivery: signed POSTs from a background thread, retries with backoff, chaos."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from .store import SandboxState


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header value for `payload`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    endpoint_id: str = field(compare=False)
    event_id: str = field(compare=False)
    attempt: int = field(compare=False, default=0)


@dataclass
class Chaos:
    duplicate_rate: float = 0.0
    max_delay_seconds: float = 0.0  # random extra delay per delivery: reorders deliveries


@dataclass
class Delivery:
    event_id: str
    event_type: str
    endpoint_id: str
    attempt: int
    status: int | None
    error: str | None
    at: float


class WebhookDispatcher:
    """Delivers events to enabled webhook endpoints. `drain()` waits for the queue to empty."""

    def __init__(self, state: SandboxState, *, seed: int = 0, chaos: Chaos | None = None) -> None:
        self.state = state
        self.chaos = chaos or Chaos()
        self.rng = random.Random(seed)
        self.deliveries: list[Delivery] = []
        self.given_up: list[tuple[str, str]] = []
        self._heap: list[_Job] = []
        self._seq = 0
        self._inflight = 0
        self._cv = threading.Condition()
        self._stop = False
        self._client = httpx.Client(timeout=state.settings.webhook_timeout_seconds)
        self._thread = threading.Thread(
            target=self._run, name="stripe-sandbox-webhooks", daemon=True
        )
        self._thread.start()

    # ---- producer side ------------------------------------------------------------------------
    def enqueue(self, event: dict[str, Any], endpoints: list[dict[str, Any]]) -> int:
        n = 0
        with self._cv:
            for ep in endpoints:
                copies = 2 if self.rng.random() < self.chaos.duplicate_rate else 1
                for _ in range(copies):
                    delay = self.rng.random() * self.chaos.max_delay_seconds
                    self._push(time.monotonic() + delay, ep["id"], event["id"], 0)
                n += 1
            self._cv.notify_all()
        return n

    def _push(self, due: float, endpoint_id: str, event_id: str, attempt: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Job(due, self._seq, endpoint_id, event_id, attempt))

    # ---- test helpers -------------------------------------------------------------------------
    def pending(self) -> int:
        with self._cv:
            return len(self._heap) + self._inflight

    def drain(self, timeout: float = 10.0) -> bool:
        """Block until every queued delivery (including retries) finished; True if drained."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._heap or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=5)
        self._client.close()

    # ---- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._heap or self._heap[0].due > time.monotonic()):
                    wait = self._heap[0].due - time.monotonic() if self._heap else 0.5
                    self._cv.wait(max(0.001, min(wait, 0.5)))
                if self._stop:
                    return
                job = heapq.heappop(self._heap)
                self._inflight += 1
            try:
                self._deliver(job)
            finally:
                with self._cv:
                    self._inflight -= 1
                    self._cv.notify_all()

    def _deliver(self, job: _Job) -> None:
        from .resources.events import render_event

        with self.state.lock:
            ep = self.state.table("webhook_endpoint").get(job.endpoint_id)
            ev = self.state.table("event").get(job.event_id)
            if ep is None or ev is None or ep.get("status") != "enabled":
                return
            body = json.dumps(render_event(ev), indent=2)
            url, secret = ep["url"], ep["secret"]
        status: int | None = None
        error: str | None = None
        try:
            resp = self._client.post(
                url,
                content=body.encode(),
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": sign(body, secret),
                    "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                },
            )
            status = resp.status_code
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        self.deliveries.append(
            Delivery(
                job.event_id, ev["type"], job.endpoint_id, job.attempt, status, error, time.time()
            )
        )
        ok = status is not None and 200 <= status < 300
        with self.state.lock:
            if ok:
                ev["pending_webhooks"] = max(0, ev.get("pending_webhooks", 1) - 1)
                return
        backoff = self.state.settings.webhook_backoff_seconds
        if job.attempt < len(backoff):
            with self._cv:
                self._push(
                    time.monotonic() + backoff[job.attempt],
                    job.endpoint_id,
                    job.event_id,
                    job.attempt + 1,
                )
                self._cv.notify_all()
        else:
            self.given_up.append((job.endpoint_id, job.event_id))
