"""The client-side Stripe rate policy: endpoints, budgets per mode, the CLI's error line."""

from __future__ import annotations

import threading

import pytest
import stripe

from billing_pipelines.defs.resources import StripeResource
from billing_pipelines.lib.stripe import buckets, pacing
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.stripe.client import RateLimits, endpoint_of


def test_endpoints_are_named_operations_not_objects() -> None:
    # docs.stripe.com/rate-limits: GET /v1/payment_intents/{id} for different ids is one endpoint.
    assert endpoint_of("get", "/v1/customers/cus_0001") == "GET /v1/customers/{id}"
    assert endpoint_of("GET", "/v1/customers/cus_NffrFeUfNV2Hib") == "GET /v1/customers/{id}"
    assert endpoint_of("post", "/v1/customers") == "POST /v1/customers"
    assert endpoint_of("post", "/v1/customers") != endpoint_of("get", "/v1/customers")
    assert (
        endpoint_of("get", "/v1/billing/meters/mtr_12/event_summaries")
        == "GET /v1/billing/meters/{id}/event_summaries"
    )
    assert endpoint_of("post", "/v1/test_helpers/test_clocks/clock_9/advance") == (
        "POST /v1/test_helpers/test_clocks/{id}/advance"
    )
    assert endpoint_of("post", "/v1/billing/meter_events") == "POST /v1/billing/meter_events"


def test_budgets_follow_the_key_mode() -> None:
    test = RateLimits.for_key("sk_test_x")
    live = RateLimits.for_key("rk_live_x")
    # A share below Stripe's documented limits: 25/s test, 100/s live, 25/s per endpoint.
    assert 0 < test.global_per_second < stripe_api.STRIPE_TEST_GLOBAL_LIMIT
    assert stripe_api.STRIPE_TEST_GLOBAL_LIMIT < live.global_per_second
    assert live.global_per_second < stripe_api.STRIPE_LIVE_GLOBAL_LIMIT
    assert test.endpoint_per_second < stripe_api.STRIPE_ENDPOINT_LIMIT
    # Live meter events have their own limit; in test mode they share the global budget.
    assert test.meter_events_per_second is None
    assert live.meter_events_per_second is not None
    assert live.meter_events_per_second < stripe_api.STRIPE_LIVE_METER_EVENTS_LIMIT
    chosen = RateLimits.for_key("sk_test_x", global_per_second=3, endpoint_per_second=2)
    assert (chosen.global_per_second, chosen.endpoint_per_second) == (3, 2)


def test_a_meter_events_rate_gives_a_test_key_live_modes_separate_meter_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen = RateLimits.for_key("sk_test_x", meter_events_per_second=640)
    assert chosen.meter_events_per_second == 640
    assert chosen.global_per_second == RateLimits.for_key("sk_test_x").global_per_second
    # ... and the setting reaches the resource's client (STRIPE_METER_EVENTS_PER_SECOND).
    monkeypatch.setenv("STRIPE_METER_EVENTS_PER_SECOND", "512")
    budgets = []
    real = stripe_api.shared_budget

    def spy(api_base: str, api_key: str, limits: RateLimits) -> stripe_api.RequestBudget:
        budgets.append(limits)
        return real(api_base, api_key, limits)

    monkeypatch.setattr(stripe_api, "shared_budget", spy)
    StripeResource(api_key="sk_test_meter", api_base="http://127.0.0.1:9").client()
    assert [b.meter_events_per_second for b in budgets] == [512]


def test_one_budget_per_account_in_a_process() -> None:
    limits = RateLimits.for_key("sk_test_a")
    first = stripe_api.shared_budget("http://127.0.0.1:1", "sk_test_a", limits)
    assert stripe_api.shared_budget("http://127.0.0.1:1/", "sk_test_b", limits) is first
    assert stripe_api.shared_budget("http://127.0.0.1:2", "sk_test_a", limits) is not first


def test_a_stripe_error_is_one_line_with_type_message_and_request() -> None:
    error = stripe.CardError(
        "Your card was declined.",
        param=None,
        code="card_declined",
        http_status=402,
        json_body={"error": {"type": "card_error", "code": "card_declined"}},
        headers={"request-id": "req_42"},
    )
    line = stripe_api.describe_error(error)
    assert line == (
        "Stripe card_error (card_declined): Your card was declined.; HTTP 402; request req_42"
    )
    assert "\n" not in line
    # The webhook queue's last_error column records the same line.
    from billing_pipelines.defs.webhooks.context import describe_error as queue_error

    assert queue_error(error) == line


def test_a_failed_step_names_the_stripe_error() -> None:
    assert stripe_api.describe_failure("RateLimitError", "Request req_7: Too many requests") == (
        "Stripe RateLimitError: Too many requests; request req_7"
    )
    assert stripe_api.describe_failure("ValueError", "Request req_7: nope") is None


def test_limiters_share_one_background_thread_and_release_their_buckets() -> None:
    """A long process makes limiters per push and per sandbox: they must not each keep a thread."""
    before = threading.active_count()
    buckets_before = len(buckets.BUCKETS)
    for _ in range(200):
        limiter = pacing.RateLimiter(50)
        limiter.acquire()
    del limiter
    held = pacing.RateLimiter(50)
    held.acquire()
    # One shared trimming thread at most, whatever the number of limiters made so far.
    assert threading.active_count() - before <= 1
    assert len(buckets.BUCKETS) == buckets_before + 1  # only `held` is still alive
    held.close()
    assert len(buckets.BUCKETS) == buckets_before


def test_limiters_in_one_process_do_not_share_permits() -> None:
    """Each limiter has its own bucket: one limiter spent does not hold back another."""
    spent = pacing.RateLimiter(0.01)  # one permit per 100 s
    fresh = pacing.RateLimiter(0.01)
    spent.acquire()
    assert not spent._limiter.try_acquire(spent._name, blocking=False)
    assert fresh._limiter.try_acquire(fresh._name, blocking=False)
    spent.close()
    fresh.close()


def test_an_explicit_meter_events_budget_keeps_meter_events_off_the_account_budget() -> None:
    # A test account standing in for a live one (STRIPE_METER_EVENTS_PER_SECOND): meter events
    # take permits from their own budget only, every other call from the account's and its
    # endpoint's, as live mode counts them (docs.stripe.com/rate-limits).
    limits = RateLimits.for_key("sk_test_x", global_per_second=50, meter_events_per_second=700)
    assert limits.meter_events_per_second == 700
    assert RateLimits.for_key("sk_test_x").meter_events_per_second is None
    budget = stripe_api.RequestBudget(limits)
    taken: list[str] = []

    class Counting:
        def __init__(self, name: str, inner: pacing.RateLimiter) -> None:
            self.name, self.inner = name, inner

        def acquire(self) -> None:
            taken.append(self.name)
            self.inner.acquire()

    budget._global = Counting("account", budget._global)  # type: ignore[assignment]
    assert budget._meter is not None
    budget._meter = Counting("meter", budget._meter)  # type: ignore[assignment]
    for _ in range(3):
        budget.acquire("post", "/v1/billing/meter_events")
    budget.acquire("get", "/v1/subscriptions")
    assert taken == ["meter", "meter", "meter", "account"]


def test_the_meter_events_setting_reaches_the_clients_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from billing_pipelines.defs.resources import StripeResource
    from billing_pipelines.lib.stripe.transport import PacedRequestsClient

    monkeypatch.setenv("STRIPE_METER_EVENTS_PER_SECOND", "900")
    client = StripeResource(api_key="sk_test_x", api_base="http://127.0.0.1:9").client()
    transport = client._requestor._client
    assert isinstance(transport, PacedRequestsClient)
    assert transport.budget.limits.meter_events_per_second == 900


@pytest.mark.parametrize(
    ("per_second", "latency", "expected"),
    [
        (20.0, 0.25, 8),  # test mode's budget: 5 in flight would do, the floor is 8
        (33.3, 0.25, 9),  # 8.3 in flight, rounded up
        (400.0, 0.25, 100),  # the live default: 100 requests in flight at 250 ms
        (800.0, 0.1, 80),
        (1000.0, 0.25, 250),
        (5000.0, 0.25, 256),  # capped
    ],
)
def test_push_workers_keep_rate_times_latency_requests_in_flight(
    per_second: float, latency: float, expected: int
) -> None:
    assert pacing.workers_for(per_second, latency) == expected


def test_the_meter_push_derives_its_workers_from_its_rate_unless_set() -> None:
    from billing_pipelines.definitions import defs

    asset = defs().resolve_assets_def("stripe_meter_reports")
    schema = asset.op.config_schema
    assert schema is not None
    workers = schema.as_field().config_type.fields["workers"]  # type: ignore[attr-defined]
    # Optional, with no number of its own: the asset derives it from the rate (workers_for).
    assert workers.is_required is False
    assert not workers.default_provided or workers.default_value is None
    assert pacing.workers_for(pacing.DEFAULT_LIVE_MODE_RATE) == 100
