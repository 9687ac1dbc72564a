"""The one place that builds a Stripe client: official SDK, base address, rate budget, retries.

Every request of every client in the process goes through one policy (docs.stripe.com/rate-limits):

- a client-side budget shared by the process: Stripe's global limit (100 requests/s live, 25 in
  test mode) and its per-endpoint limit (25/s for each named operation, e.g.
  `GET /v1/customers/{id}`), both at a safe share so other processes on the account fit beside
  us. Meter events in live mode have their own limit (1,000/s) and do not count against the
  global one; the page gives them no separate limit in test mode, so there they take from the
  global budget like any other call (the stricter reading);
- a 429 is retried with exponential backoff and jitter ("Handling limiting gracefully"),
  bounded, with the same request (and so the same Idempotency-Key: the SDK sets one on every
  POST), so a retried write cannot create anything twice. The SDK itself retries network
  errors, 409s and 5xx (`max_network_retries`) but never a plain 429.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from billing_pipelines.lib.stripe.pacing import RateLimiter

if TYPE_CHECKING:
    # The SDK is imported where a client is built or an error is examined, not when this module
    # loads: the Dagster definitions import this module, and every run and sensor pays for it.
    import stripe


F = TypeVar("F", bound=Callable[..., object])
log = logging.getLogger(__name__)

# Stripe's documented limits, requests per second (docs.stripe.com/rate-limits).
STRIPE_LIVE_GLOBAL_LIMIT = 100.0
STRIPE_TEST_GLOBAL_LIMIT = 25.0
STRIPE_ENDPOINT_LIMIT = 25.0
STRIPE_LIVE_METER_EVENTS_LIMIT = 1000.0
# The share of a limit one process uses by default: webhook handlers, sensors and a second
# worker share the account with us.
DEFAULT_SHARE = 0.8
METER_EVENTS_PATH = "/v1/billing/meter_events"


def is_live_key(api_key: str) -> bool:
    """Live-mode secret or restricted key: Stripe's live limits apply."""
    return api_key.startswith(("sk_live_", "rk_live_"))


@dataclass(frozen=True)
class RateLimits:
    """The client-side budget for one Stripe account, in requests per second."""

    global_per_second: float
    endpoint_per_second: float
    # None: meter events take from the global budget (test mode).
    meter_events_per_second: float | None
    # How many times one request is retried after a 429 before its error is raised.
    retries_on_429: int = 8
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 8.0

    @classmethod
    def for_key(
        cls,
        api_key: str,
        *,
        global_per_second: float | None = None,
        endpoint_per_second: float | None = None,
        meter_events_per_second: float | None = None,
        retries_on_429: int = 8,
    ) -> RateLimits:
        """Stripe's limits for the key's mode at DEFAULT_SHARE; explicit values win.

        An explicit meter-events budget applies in either mode: it gives meter events their own
        budget apart from the account's, as live mode does (for a test account standing in for a
        live one, e.g. a benchmark against a sandbox that limits like live mode).
        """
        live = is_live_key(api_key)
        glob = STRIPE_LIVE_GLOBAL_LIMIT if live else STRIPE_TEST_GLOBAL_LIMIT
        return cls(
            global_per_second=global_per_second or glob * DEFAULT_SHARE,
            endpoint_per_second=endpoint_per_second or STRIPE_ENDPOINT_LIMIT * DEFAULT_SHARE,
            meter_events_per_second=(
                meter_events_per_second
                or (STRIPE_LIVE_METER_EVENTS_LIMIT * DEFAULT_SHARE if live else None)
            ),
            retries_on_429=retries_on_429,
        )


# A path segment that names an object (cus_123, mtr_Ab9...) rather than a resource: Stripe's
# resource words are lowercase letters and underscores only.
_OBJECT_ID = re.compile(r"[A-Z0-9]")


def endpoint_of(method: str, path: str) -> str:
    """The named operation Stripe limits: `GET /v1/customers/{id}` for every customer id."""
    parts = [
        "{id}" if i > 0 and _OBJECT_ID.search(part) else part
        for i, part in enumerate(path.strip("/").split("/"))
    ]
    return f"{method.upper()} /{'/'.join(parts)}"


class RequestBudget:
    """Permits for one account's requests, shared by every thread and client of the process."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._global = RateLimiter(limits.global_per_second)
        self._meter = (
            RateLimiter(limits.meter_events_per_second) if limits.meter_events_per_second else None
        )
        self._endpoints: dict[str, RateLimiter] = {}
        self._lock = threading.Lock()

    def _endpoint(self, endpoint: str) -> RateLimiter:
        with self._lock:
            limiter = self._endpoints.get(endpoint)
            if limiter is None:
                limiter = RateLimiter(self.limits.endpoint_per_second)
                self._endpoints[endpoint] = limiter
            return limiter

    @property
    def meter_events_per_second(self) -> float:
        """The rate this budget holds meter events to: their own limit, else the account's and
        the meter-event endpoint's, whichever is lower."""
        limits = self.limits
        if self._meter is not None and limits.meter_events_per_second:
            return limits.meter_events_per_second
        return min(limits.global_per_second, limits.endpoint_per_second)

    def acquire(self, method: str, path: str) -> None:
        """Block until a request to this endpoint fits the account's budget."""
        if self._meter is not None and path.rstrip("/") == METER_EVENTS_PATH:
            self._meter.acquire()  # live meter events: their own limit, not the global one
            return
        self._global.acquire()
        self._endpoint(endpoint_of(method, path)).acquire()


_BUDGETS: dict[tuple[str, str, RateLimits], RequestBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def shared_budget(api_base: str, api_key: str, limits: RateLimits) -> RequestBudget:
    """The process's one budget for this account (same base, mode and limits)."""
    mode = "live" if is_live_key(api_key) else "test"
    key = (api_base.rstrip("/"), mode, limits)
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None:
            budget = RequestBudget(limits)
            _BUDGETS[key] = budget
        return budget


# The budget each client of `make_client` sends under, by client (gone with the client).
_CLIENT_BUDGETS: weakref.WeakKeyDictionary[Any, RequestBudget] = weakref.WeakKeyDictionary()


def budget_of(client: object) -> RequestBudget | None:
    """The process budget a client of `make_client` sends under (None for any other client)."""
    try:
        return _CLIENT_BUDGETS.get(client)
    except TypeError:  # not weak-referenceable: not one of ours
        return None


Response = tuple[bytes, int, Mapping[str, str]]


def _throttled(response: Response) -> bool:
    """A 429 that Stripe did not ask us to leave alone."""
    _, status, headers = response
    return status == 429 and str(headers.get("stripe-should-retry", "")).lower() != "false"


def _log_retry(state: RetryCallState) -> None:
    method, url = state.args[0], state.args[1]
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "Stripe rate limited %s %s; retry %d in %.1fs",
        method.upper(),
        urlsplit(url).path,
        state.attempt_number,
        wait,
    )


def make_client(
    api_key: str,
    *,
    api_base: str = "https://api.stripe.com",
    max_network_retries: int = 3,
    timeout_seconds: float = 30.0,
    limits: RateLimits | None = None,
) -> stripe.StripeClient:
    """A StripeClient under the process's rate budget: paced, 429s retried, idempotent writes."""
    import stripe

    from billing_pipelines.lib.stripe.sdk_logging import format_sdk_log_lines_only_when_shown
    from billing_pipelines.lib.stripe.transport import PacedRequestsClient

    format_sdk_log_lines_only_when_shown()
    limits = limits or RateLimits.for_key(api_key)
    budget = shared_budget(api_base, api_key, limits)
    client = stripe.StripeClient(
        api_key=api_key,
        base_addresses={"api": api_base},
        max_network_retries=max_network_retries,
        http_client=PacedRequestsClient(budget, timeout=timeout_seconds),
    )
    _CLIENT_BUDGETS[client] = budget
    return client


@dataclass(frozen=True)
class ClientSpec:
    """Everything `make_client` needs, picklable: another process builds the same client."""

    api_key: str = field(repr=False)  # a secret: never in a repr, a log or an error
    api_base: str
    max_network_retries: int
    timeout_seconds: float
    limits: RateLimits

    def build(self) -> stripe.StripeClient:
        """A client under this process's budget for these limits."""
        return make_client(
            self.api_key,
            api_base=self.api_base,
            max_network_retries=self.max_network_retries,
            timeout_seconds=self.timeout_seconds,
            limits=self.limits,
        )

    def share(self, parts: int) -> ClientSpec:
        """The same client with 1/parts of every budget: `parts` processes together stay within
        the account's limits (each process paces only itself)."""
        if parts < 1:
            raise ValueError(f"parts must be >= 1, got {parts}")
        limits = self.limits
        meter = limits.meter_events_per_second
        return replace(
            self,
            limits=replace(
                limits,
                global_per_second=limits.global_per_second / parts,
                endpoint_per_second=limits.endpoint_per_second / parts,
                meter_events_per_second=None if meter is None else meter / parts,
            ),
        )


# The client type and the errors that code outside this package names: it annotates and catches
# them through this module and never imports the SDK itself. They are looked up on first use
# (module __getattr__), so importing this module does not load the SDK.
if TYPE_CHECKING:
    StripeClient = stripe.StripeClient
    # What a Stripe call raises when Stripe (or the way to it) refuses.
    StripeError = stripe.StripeError
    # A card was declined (paying an invoice with a new card can fail like this).
    CardError = stripe.CardError

_SDK_NAMES = frozenset({"StripeClient", "StripeError", "CardError"})


def __getattr__(name: str) -> Any:
    """The SDK's client and error classes, and the paced transport, loaded on first use."""
    if name in _SDK_NAMES:
        import stripe

        return getattr(stripe, name)
    if name == "PacedRequestsClient":
        from billing_pipelines.lib.stripe.transport import PacedRequestsClient

        return PacedRequestsClient
    if name == "ERROR_CLASS_NAMES":
        return error_class_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The SDK's error classes by name (CardError, RateLimitError, ...): a failed Dagster step keeps
# only the class name and the message of what it raised.
def _error_classes(base: type) -> set[str]:
    names = {base.__name__}
    subclasses: list[type] = base.__subclasses__()
    for sub in subclasses:
        names |= _error_classes(sub)
    return names


@functools.cache
def error_class_names() -> frozenset[str]:
    """Every SDK error class name (computed once, when first needed)."""
    import stripe

    return frozenset(_error_classes(stripe.StripeError))


_REQUEST_PREFIX = re.compile(r"^Request (req_\w+): (.*)$", re.DOTALL)


def describe_failure(class_name: str, message: str) -> str | None:
    """The one line for a Stripe error known only by class name and message, else None."""
    if class_name not in error_class_names():
        return None
    text = message.strip()
    found = _REQUEST_PREFIX.match(text)
    if found:
        return f"Stripe {class_name}: {found.group(2).strip()}; request {found.group(1)}"
    return f"Stripe {class_name}: {text}"


def describe_error(exc: stripe.StripeError) -> str:
    """One line for an operator: Stripe's error type, its message and the request id."""
    error = exc.error
    kind = getattr(error, "type", None) or type(exc).__name__
    code = getattr(error, "code", None)
    message = (exc.user_message or str(exc) or "no message").strip().splitlines()[0]
    parts = [f"Stripe {kind}{f' ({code})' if code else ''}: {message}"]
    if exc.http_status:
        parts.append(f"HTTP {exc.http_status}")
    if exc.request_id:
        parts.append(f"request {exc.request_id}")
    return "; ".join(parts)


def is_transient(exc: BaseException) -> bool:
    """A 429, a 5xx, a lock timeout or a network failure: asking again may succeed."""
    import stripe

    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        return status == 429 or status >= 500 or (status == 409 and exc.code == "lock_timeout")
    return False


def retry_reads(func: F) -> F:
    """Retry a read of Stripe on transient failures with backoff (8 tries, up to 8 s apart).

    Only for reads, which are safe to repeat. The client already retries 429s and the SDK
    5xx and network errors; this outer loop carries a snapshot or a remediation through an
    outage longer than those bounded retries.
    """
    retrying = retry(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=0.5, max=8),
        stop=stop_after_attempt(8),
        reraise=True,
    )
    return cast("F", retrying(func))
