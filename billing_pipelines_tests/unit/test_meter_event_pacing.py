"""How a meter push is paced: one limiter per event where the client's budget already paces it,
and a retryable failure gets exactly the policy's attempts."""

from __future__ import annotations

import threading

import pytest

from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe.client import RateLimits, make_client
from billing_pipelines.lib.stripe.meters import event_limiter

# Nothing is sent in these tests: the address only names the client's budget.
BASE = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("meter_budget", "push_rate", "push_limiter"),
    [
        (1000.0, 1000.0, False),  # the same limit twice: the budget's alone
        (600.0, 1000.0, False),  # the budget is the stricter one: it alone binds
        (1000.0, 250.0, True),  # the push is slower than the budget: its own limiter binds
    ],
)
def test_a_push_waits_on_its_own_limiter_only_when_the_client_budget_allows_more(
    meter_budget: float, push_rate: float, push_limiter: bool
) -> None:
    limits = RateLimits(100.0, 25.0, meter_budget)
    client = make_client("sk_test_pacing", api_base=f"{BASE}/m{meter_budget}", limits=limits)
    limiter = event_limiter(client, push_rate)
    assert (limiter is not None) is push_limiter
    if limiter is not None:
        assert limiter.per_second == push_rate
        limiter.close()


def test_in_test_mode_the_account_and_endpoint_budget_is_what_paces_meter_events() -> None:
    # Test mode: meter events take from the account's budget and the endpoint's.
    limits = RateLimits(20.0, 15.0, None)
    client = make_client("sk_test_pacing", api_base=f"{BASE}/test", limits=limits)
    assert event_limiter(client, 15.0) is None
    assert event_limiter(client, 16.0) is None
    slower = event_limiter(client, 14.0)
    assert slower is not None and slower.per_second == 14.0
    slower.close()


def test_a_client_not_built_by_the_project_keeps_the_pushs_own_limiter() -> None:
    limiter = event_limiter(object(), 300.0)  # type: ignore[arg-type]
    assert limiter is not None and limiter.per_second == 300.0
    limiter.close()


class Flaky(Exception):
    pass


@pytest.mark.parametrize("attempts", [1, 2, 4])
def test_a_retryable_failure_gets_exactly_the_policys_attempts(attempts: int) -> None:
    calls: dict[int, int] = {}
    lock = threading.Lock()

    def call(item: int) -> int:
        with lock:
            calls[item] = calls.get(item, 0) + 1
            seen = calls[item]
        # Odd items always fail; even items fail until their last allowed attempt.
        if item % 2 or seen < attempts:
            raise Flaky(item)
        return item

    done: list[int] = []
    failures = pacing.run_paced(
        range(6),
        call,
        lambda item, value: done.append(value),
        limiter=None,
        retryable=Flaky,
        retry=pacing.RetryPolicy(attempts=attempts, initial_seconds=0.001, max_seconds=0.002),
        workers=3,
    )
    assert sorted(item for item, _ in failures) == [1, 3, 5]
    assert all(isinstance(error, Flaky) for _, error in failures)
    assert sorted(done) == [0, 2, 4]
    assert calls == dict.fromkeys(range(6), attempts)
