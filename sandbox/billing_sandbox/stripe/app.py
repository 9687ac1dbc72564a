"""The ASGI app: auth, rate limit, faults, idempotency, param validation, dispatch, expand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import threading
import time
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import resources  # noqa: F401 - registers the routes
from .params import validate
from .render import expand, render
from .router import Ctx, match
from .store import API_VERSION, FaultRates, SandboxState
from .webhooks import Chaos, WebhookDispatcher
from .wire import StripeError, parse_form

# Stripe's limits in test mode (docs.stripe.com/rate-limits, "Rate limiter"): 25 requests/s for
# the account, and 25/s for each named operation ("endpoint": `POST /v1/customers` and
# `GET /v1/customers/{id}` are two; every customer id shares the second). Both count every
# request. The page gives meter events a separate limit in live mode only, so here they count
# against both limits like any other call (the stricter choice). It documents no burst size:
# a bucket holds one second of requests.
TEST_MODE_GLOBAL_LIMIT = 25.0
TEST_MODE_ENDPOINT_LIMIT = 25.0
# Live mode, for a sandbox that stands in for a live account (benchmarks): "Calls to the Meter
# events endpoint in live mode are subject to a separate rate limit, and don't count against the
# basic limits. The limit is 1000 calls per second per Stripe account" (docs.stripe.com/
# rate-limits; docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api, "Rate
# limits", says the same, and that in test and sandbox mode they count toward the basic limit).
LIVE_MODE_METER_EVENTS_LIMIT = 1000.0


class TokenBucket:
    """Requests per second with a one-second burst, safe across the server's threads."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
    # Compact JSON: api.stripe.com pretty-prints its answers, but the whitespace means nothing to
    # any client (the SDK parses the JSON), and `indent` makes `json` fall back from its C encoder
    # to the pure-Python one, a tenth of the sandbox's CPU per meter event.
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _api_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if auth.lower().startswith("basic "):
        try:
            return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
        except ValueError:
            return None
    return None


def create_app(
    state: SandboxState | None = None,
    *,
    rate_limit: float | None = TEST_MODE_GLOBAL_LIMIT,
    endpoint_rate_limit: float | None = TEST_MODE_ENDPOINT_LIMIT,
    meter_events_rate_limit: float | None = None,
    fault_rate: float = 0.0,
    fault_after_rate: float = 0.0,
    throttle_rate: float = 0.0,
    latency_ms: int = 0,
    seed: int = 0,
    webhook_chaos: Chaos | None = None,
) -> Starlette:
    """A Starlette app emulating api.stripe.com over `state` (a fresh one by default).

    Injected faults, drawn from one `random.Random(seed)` per app (one draw per authenticated
    request, so a seed replays the same sequence of faults by arrival order):

    - `throttle_rate`: answer 429 `rate_limit` (as Stripe's rate limiter does) without doing
      the work; the SDK does not retry it (no `Stripe-Should-Retry`).
    - `fault_rate`: answer 500 *before* dispatching: nothing happened.
    - `fault_after_rate`: dispatch the request (its side effect and its idempotency record are
      kept), then answer 500 anyway, as Stripe does when it fails after the work or the
      connection drops on the way back. A retry with the same Idempotency-Key is replayed.

    The three rates live in `state.faults` (a FaultRates), so a test can change them while the
    sandbox serves (a bad day, then a good one). `rate_limit` (the account, requests/s) and
    `endpoint_rate_limit` (each named operation) answer real 429s on top, at Stripe's test-mode
    numbers by default (None or 0 turns one off). `meter_events_rate_limit` limits meter events
    as live mode does: that many per second in their own bucket, spending neither the account's
    nor the endpoint's (None, the default: test mode, where they count against both).
    `app.state.throttled` counts those 429s by
    endpoint, `app.state.faults`
    what was injected, by kind and HTTP method (e.g. `("after", "POST")`), and
    `app.state.requests` every request received, by method, and `app.state.paths` by path
    (a test counts the requests one endpoint received).
    """
    st = state or SandboxState(seed=seed)
    if st.webhooks is None:
        st.webhooks = WebhookDispatcher(st, seed=seed, chaos=webhook_chaos)
    bucket = TokenBucket(rate_limit) if rate_limit else None
    meter_bucket = TokenBucket(meter_events_rate_limit) if meter_events_rate_limit else None
    endpoint_buckets: dict[str, TokenBucket] = {}
    throttled: Counter[str] = Counter()
    if fault_rate or fault_after_rate or throttle_rate:
        st.faults = FaultRates(throttle=throttle_rate, before=fault_rate, after=fault_after_rate)
    fault_rng = random.Random(seed)
    faults: Counter[tuple[str, str]] = Counter()
    requests: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    counter = {"n": 0}

    async def handle(request: Request) -> Response:
        counter["n"] += 1
        method = request.method
        # `request.url.path` without rebuilding and re-splitting the whole URL for every request
        # (Starlette's URL escapes these three in the decoded path, so the same is done here).
        path = request.scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
        requests[method] += 1
        paths[path] += 1
        request_id = f"req_{seed:02d}{counter['n']:012d}"
        headers = {"Request-Id": request_id, "Stripe-Version": API_VERSION}
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        key = _api_key(request)
        if not key:
            return _json(
                401,
                StripeError(
                    401,
                    "You did not provide an API key. You need to provide your API key in the "
                    "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                    "YOUR_SECRET_KEY').",
                ).body(),
                headers,
            )
        if not key.startswith(("sk_test_", "rk_test_")):
            shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:]
            return _json(
                401, StripeError(401, f"Invalid API Key provided: {shown}").body(), headers
            )
        if meter_bucket is not None and _is_meter_event(method, path):
            # Live mode: meter events have their own limit and spend no other (see above).
            if not meter_bucket.take():
                throttled[_endpoint(method, path)] += 1
                return _rate_limited(headers)
        elif bucket is not None and not bucket.take():
            throttled[_endpoint(method, path)] += 1
            return _rate_limited(headers)
        elif endpoint_rate_limit:
            endpoint = _endpoint(method, path)
            limiter = endpoint_buckets.get(endpoint)
            if limiter is None:
                limiter = endpoint_buckets.setdefault(endpoint, TokenBucket(endpoint_rate_limit))
            if not limiter.take():
                throttled[endpoint] += 1
                return _rate_limited(headers)
        fault = None
        rates = st.faults
        if rates.any:
            # One draw per request: [throttle | before | after | no fault].
            draw = fault_rng.random()
            if draw < rates.throttle:
                fault = "throttle"
            elif draw < rates.throttle + rates.before:
                fault = "before"
            elif draw < rates.throttle + rates.before + rates.after:
                fault = "after"
        if fault is not None:
            faults[(fault, method)] += 1
        if fault == "throttle":
            return _rate_limited(headers)
        if fault == "before":
            return _json(500, StripeError(500, "An unknown error occurred").body(), headers)
        raw = (
            (await request.body()).decode()
            if method == "POST"
            else request.scope["query_string"].decode()  # as `request.url.query` decodes it
        )
        idem_key = request.headers.get("idempotency-key") if method == "POST" else None
        status, body, extra = _dispatch(st, method, path, raw, idem_key, key, request_id)
        if fault == "after":
            # The work is done (and replayable by its idempotency key); the answer is lost.
            return _json(500, StripeError(500, "An unknown error occurred").body(), headers)
        headers.update(extra)
        return _json(status, body, headers)

    app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST", "DELETE"])])
    app.state.sandbox = st
    app.state.faults = faults
    app.state.throttled = throttled
    app.state.requests = requests
    app.state.paths = paths
    return app


def _is_meter_event(method: str, path: str) -> bool:
    """A v1 meter event: the one call live mode limits apart from the account's."""
    return method == "POST" and path.rstrip("/") == "/v1/billing/meter_events"


def _endpoint(method: str, path: str) -> str:
    """The named operation a request counts against: its route pattern (`/v1/customers/{id}`)."""
    found = match(method, path)
    if found is None:
        return f"{method} {path}"
    return f"{method} {found[0].regex.pattern}"


def _rate_limited(headers: dict[str, str]) -> Response:
    """Stripe's answer from its rate limiter: 429, nothing done.

    The body follows docs.stripe.com/error-codes (`rate_limit`: "Too many requests hit the API
    too quickly") inside the error object of docs.stripe.com/api/errors (type
    `invalid_request_error`, as the SDK maps a 429 to RateLimitError). Headers: the
    `Request-Id` and `Stripe-Version` of every answer; Stripe documents no `Retry-After` and no
    `Stripe-Should-Retry` on a 429, so none is sent and the SDK does not retry it by itself.
    """
    return _json(
        429,
        StripeError(
            429,
            "Request rate limit exceeded. You can learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        ).body(),
        headers,
    )


def _dispatch(
    st: SandboxState,
    method: str,
    path: str,
    raw: str,
    idem_key: str | None,
    api_key: str,
    request_id: str,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    with st.lock:
        _tick_real_time(st)
        fingerprint = hashlib.sha256(f"{method} {path}\n{raw}".encode()).hexdigest()
        store_key = f"{api_key}:{idem_key}" if idem_key else None
        if store_key is not None:
            _expire_idempotency(st)
            prior = st.data.idempotency.get(store_key)
            if prior is not None and st.real_now() - prior["created"] > (
                st.settings.idempotency_ttl_seconds
            ):
                del st.data.idempotency[store_key]
                prior = None
            if prior is not None:
                if prior["fingerprint"] != fingerprint:
                    return (
                        400,
                        StripeError(
                            400,
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with. Try using a key other than "
                            f"'{idem_key}' if you meant to execute a different request.",
                            type="idempotency_error",
                        ).body(),
                        {},
                    )
                return (
                    prior["status"],
                    prior["body"],
                    {"Idempotent-Replayed": "true", "Original-Request": prior["request_id"]},
                )
        found = match(method, path)
        if found is None:
            return (
                404,
                StripeError(
                    404,
                    f"Unrecognized request URL ({method}: {path}). Please see "
                    "https://stripe.com/docs or we can help at https://support.stripe.com/.",
                ).body(),
                {},
            )
        rt, args = found
        extra: dict[str, str] = {}
        try:
            params = parse_form(raw)
            if rt.params_cls is not None:
                params = validate(params, rt.params_cls)
            ctx = Ctx(st, request_id, idem_key, path)
            result = rt.handler(ctx, params, **args)
            body = expand(st, render(st, result), list(params.get("expand") or []))
            status = 200
        except StripeError as e:
            status, body, extra = e.status, e.body(), e.headers
            body["error"]["request_log_url"] = (
                f"https://dashboard.stripe.com/test/logs/{request_id}"
            )
        if store_key is not None and status != 500:
            st.data.idempotency[store_key] = {
                "fingerprint": fingerprint,
                "status": status,
                "body": body,
                "created": st.real_now(),
                "request_id": request_id,
            }
        return status, body, extra


def _expire_idempotency(st: SandboxState) -> None:
    ttl = st.settings.idempotency_ttl_seconds
    now = st.real_now()
    if len(st.data.idempotency) % 1024 == 0:
        for k in [k for k, v in st.data.idempotency.items() if now - v["created"] > ttl]:
            del st.data.idempotency[k]


def _tick_real_time(st: SandboxState) -> None:
    """Run due lifecycle actions of customers without a test clock (at most once a second)."""
    from .billing_engine import run_until

    now = st.real_now()
    if getattr(st, "_last_tick", None) != now:
        st._last_tick = now  # type: ignore[attr-defined]
        run_until(st, None, now)
