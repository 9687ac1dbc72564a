"""The SDK's HTTP transport under the process's Stripe rate budget (see client.py).

Requests go out through one urllib3 pool shared by every thread of the client (keep-alive
connections), not through a `requests` session: a session re-reads the proxy environment
variables and re-checks the CA bundle on disk for every request, which cost about a third of
the client's CPU per meter event (BENCHMARKS.md, "Meter push at live limits"). Proxies from the
environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) are still honoured, resolved once per host.
"""

from __future__ import annotations

import threading
import urllib.request
from typing import Any, NoReturn, cast
from urllib.parse import SplitResult, urlsplit

import stripe
import urllib3
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential_jitter

from billing_pipelines.lib.stripe.client import RequestBudget, Response, _log_retry, _throttled
from billing_pipelines.lib.stripe.pacing import MAX_WORKERS

# Connections kept per host: as many as a push's worker threads can be, so none of them opens
# a fresh connection per request (connections are opened only as threads need them).
POOL_SIZE = MAX_WORKERS

_CONNECTION_MESSAGE = (
    "Unexpected error communicating with Stripe.  If this problem persists, let us know at "
    "support@stripe.com."
)
_SSL_MESSAGE = (
    "Could not verify Stripe's SSL certificate.  Please make sure that your network is not "
    "intercepting certificates.  If this problem persists, let us know at support@stripe.com."
)


class PacedRequestsClient(stripe.RequestsClient):
    """The SDK's transport over a shared urllib3 pool, paced by the budget, retrying 429s.

    A `stripe.RequestsClient` still (the SDK's retry loop, `request_with_retries`, is the one
    the SDK's own transport runs), with the sending replaced.
    """

    def __init__(self, budget: RequestBudget, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.budget = budget
        limits = budget.limits
        self._retrying = Retrying(
            retry=retry_if_result(_throttled),
            wait=wait_exponential_jitter(
                multiplier=limits.backoff_initial_seconds, max=limits.backoff_max_seconds
            ),
            stop=stop_after_attempt(limits.retries_on_429 + 1),
            before_sleep=_log_retry,
            # Out of retries: hand the last 429 to the SDK, which raises RateLimitError.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        # requests' semantics: the timeout bounds the connection and each read.
        self._read_timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._pool_options: dict[str, Any] = {
            "maxsize": POOL_SIZE,
            "retries": False,  # the SDK and the 429 loop above decide about retries
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": stripe.ca_bundle_path,
        }
        self._direct = urllib3.PoolManager(**self._pool_options)
        self._proxied: dict[str, urllib3.ProxyManager] = {}
        # Per scheme and host: its connection pool when it is reached directly, else its proxy.
        self._routes: dict[tuple[str, str], urllib3.HTTPConnectionPool | urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def _route(self, parts: SplitResult) -> urllib3.HTTPConnectionPool | urllib3.PoolManager:
        """This host's connection pool when it is reached directly, else its proxy's manager."""
        key = (parts.scheme, parts.netloc)
        route = self._routes.get(key)
        if route is None:
            proxy = urllib.request.getproxies().get(parts.scheme)
            with self._lock:
                if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
                    manager = self._proxied.get(proxy)
                    if manager is None:
                        manager = urllib3.ProxyManager(proxy, **self._pool_options)
                        self._proxied[proxy] = manager
                    route = manager
                else:
                    route = self._direct.connection_from_host(
                        parts.hostname, parts.port, parts.scheme
                    )
                self._routes[key] = route
        return route

    def _send(self, method: str, url: str, headers: Any, post_data: Any) -> Response:
        # Compressed answers, as the `requests` transport asked for them (decoded by urllib3).
        sent = {"Accept-Encoding": "gzip, deflate", **dict(headers or {})}
        parts = urlsplit(url)
        route = self._route(parts)
        try:
            if isinstance(route, urllib3.PoolManager):  # through a proxy: it needs the whole URL
                answer = route.request(
                    method.upper(),
                    url,
                    body=post_data,
                    headers=sent,
                    timeout=self._read_timeout,
                    redirect=False,
                )
            else:
                # Straight to the host's pool: the manager's per-request URL parsing and pool
                # lookup are done once per host (a tenth of the client's CPU per meter event).
                answer = route.urlopen(
                    method.upper(),
                    f"{parts.path}?{parts.query}" if parts.query else parts.path or "/",
                    body=post_data,
                    headers=sent,
                    timeout=self._read_timeout,
                    redirect=False,
                    retries=False,
                )
        except urllib3.exceptions.HTTPError as exc:
            _connection_error(exc)
        return answer.data, answer.status, answer.headers

    def _once(self, method: str, url: str, headers: Any, post_data: Any) -> Response:
        self.budget.acquire(method, urlsplit(url).path)
        return self._send(method, url, headers, post_data)

    def request(  # type: ignore[override]
        self, method: str, url: str, headers: Any, post_data: Any = None
    ) -> Response:
        # Each attempt (the SDK's own retries included) takes a permit; the same headers, and so
        # the same Idempotency-Key, go out on every attempt.
        first = self._once(method, url, headers, post_data)
        if not _throttled(first):
            return first  # most requests: no retry loop's bookkeeping
        answers = [first]  # the retry loop's first attempt is this one: same attempts and waits

        def again(method: str, url: str, headers: Any, post_data: Any) -> Response:
            return answers.pop() if answers else self._once(method, url, headers, post_data)

        return cast(Response, self._retrying(again, method, url, headers, post_data))

    def close(self) -> None:
        """Close every pooled connection."""
        self._direct.clear()
        for manager in self._proxied.values():
            manager.clear()
        super().close()


def _connection_error(exc: urllib3.exceptions.HTTPError) -> NoReturn:
    """The SDK's APIConnectionError for a failure on the way to Stripe, as its own transport
    raises it: timeouts and connection failures may be retried, a certificate failure not."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, urllib3.exceptions.SSLError):
        raise stripe.APIConnectionError(
            f"{_SSL_MESSAGE}\n\n(Network error: {detail})", should_retry=False
        ) from exc
    retry = isinstance(
        exc,
        urllib3.exceptions.TimeoutError
        | urllib3.exceptions.NewConnectionError
        | urllib3.exceptions.ProtocolError
        | urllib3.exceptions.MaxRetryError,
    )
    raise stripe.APIConnectionError(
        f"{_CONNECTION_MESSAGE}\n\n(Network error: {detail})", should_retry=retry
    ) from exc
