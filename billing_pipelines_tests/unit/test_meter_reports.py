"""Pure decisions of meter reporting: identifiers, versions, plans, totals, pacing, error kinds."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime

import pytest
import stripe

from billing_pipelines.lib.metering.planning import (
    BillingAccount,
    DayTotal,
    LedgerEntry,
    desired_totals,
    event_timestamp,
    identifier_for,
    plan_day,
)
from billing_pipelines.lib.stripe import pacing
from billing_pipelines.lib.stripe.meters import is_duplicate_identifier, is_retryable

DAY = date(2026, 3, 14)
METERS = [("queries", "rag_api_queries", "billable_queries")]


def _entry(value: int, version: int, status: str, tenant: str = "t1") -> LedgerEntry:
    return LedgerEntry(
        id=version,
        tenant_id=tenant,
        metric="queries",
        value=value,
        value_version=version,
        identifier=identifier_for(tenant, "queries", DAY, version),
        stripe_customer_id="cus_1",
        event_name="rag_api_queries",
        status=status,
    )


def _total(value: int, tenant: str = "t1") -> DayTotal:
    return DayTotal(tenant, "queries", value, "cus_1", "rag_api_queries")


def test_identifiers_are_deterministic_bounded_and_versioned() -> None:
    assert identifier_for("t1", "queries", DAY, 1) == identifier_for("t1", "queries", DAY, 1)
    assert identifier_for("t1", "queries", DAY, 1) != identifier_for("t1", "queries", DAY, 2)
    assert identifier_for("t1", "queries", DAY, 1) != identifier_for("t2", "queries", DAY, 1)
    long = identifier_for("x" * 300, "queries", DAY, 7)
    assert len(long) <= 100 and long == identifier_for("x" * 300, "queries", DAY, 7)


def test_newer_versions_have_later_timestamps_inside_the_day() -> None:
    start = int(datetime(2026, 3, 14, tzinfo=UTC).timestamp())
    stamps = [event_timestamp(DAY, v) for v in (1, 2, 3, 86_399)]
    assert stamps == sorted(stamps) and stamps[0] == start + 1 and stamps[-1] < start + 86_400
    with pytest.raises(ValueError):
        event_timestamp(DAY, 0)


def test_plan_sends_new_totals_and_nothing_for_unchanged_ones() -> None:
    plan = plan_day(DAY, [_total(10)], {})
    assert [(r.value, r.value_version) for r in plan.new] == [(10, 1)]
    delivered = {("t1", "queries"): _entry(10, 1, "delivered")}
    again = plan_day(DAY, [_total(10)], delivered)
    assert again.to_send == [] and again.unchanged == 1


def test_plan_adds_a_version_when_the_truth_changes() -> None:
    plan = plan_day(DAY, [_total(12)], {("t1", "queries"): _entry(10, 1, "delivered")})
    (report,) = plan.new
    assert (report.value, report.value_version) == (12, 2)
    assert report.identifier == identifier_for("t1", "queries", DAY, 2)


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_plan_resends_an_unconfirmed_version_with_its_identifier(status: str) -> None:
    entry = _entry(10, 3, status)
    plan = plan_day(DAY, [_total(10)], {("t1", "queries"): entry})
    (report,) = plan.resend
    assert plan.new == [] and report.identifier == entry.identifier and report.ledger_id == 3


def test_plan_keeps_a_stranded_total_flagged_and_unsent() -> None:
    plan = plan_day(DAY, [_total(58)], {("t1", "queries"): _entry(58, 2, "out_of_window")})
    assert plan.to_send == [] and plan.stranded == 1


def test_zero_usage_never_reported_sends_nothing() -> None:
    assert plan_day(DAY, [_total(0)], {}).to_send == []


def test_desired_totals_split_billable_and_unbillable_and_retract_deleted_usage() -> None:
    accounts = {
        "t1": BillingAccount("cus_1", "sub_1"),
        "t2": BillingAccount(None, None),
        "t3": BillingAccount("cus_3", None),
    }
    usage = {"t1": {"billable_queries": 5}, "t2": {"billable_queries": 7}, "t3": {}}
    deleted = {("t9", "queries"): _entry(4, 1, "delivered", tenant="t9")}
    accounts["t9"] = BillingAccount("cus_1", "sub_9")
    desired = desired_totals(usage, accounts, METERS, deleted)
    assert [(t.tenant_id, t.value) for t in desired.totals] == [("t1", 5), ("t9", 0)]
    assert desired.unbillable == {"t2": {"queries": 7}}


def test_paced_calls_respect_the_rate_and_retry_retryable_errors() -> None:
    class Flaky(Exception):
        pass

    seen: dict[int, int] = {}
    lock = threading.Lock()

    def call(item: int) -> int:
        with lock:
            seen[item] = seen.get(item, 0) + 1
            first = seen[item] == 1
        if item % 5 == 0 and first:
            raise Flaky(item)
        return item * 2

    results: dict[int, int] = {}
    started = time.monotonic()
    failures = pacing.run_paced(
        range(40),
        call,
        lambda item, value: results.__setitem__(item, value),
        limiter=pacing.RateLimiter(100),
        retryable=Flaky,
        retry=pacing.RetryPolicy(attempts=3, initial_seconds=0.01, max_seconds=0.02),
        workers=4,
    )
    elapsed = time.monotonic() - started
    assert failures == [] and results == {i: i * 2 for i in range(40)}
    # 48 permits at 100/s in a sliding one-second window: the second hundred never starts early.
    assert elapsed < 3


def test_paced_calls_report_exhausted_retries_and_stop_on_confirm_errors() -> None:
    class Down(Exception):
        pass

    def call(item: int) -> int:
        raise Down(item)

    failures = pacing.run_paced(
        [1, 2],
        call,
        lambda i, v: None,
        limiter=pacing.RateLimiter(1000),
        retryable=Down,
        retry=pacing.RetryPolicy(attempts=2, initial_seconds=0.001, max_seconds=0.001),
    )
    assert sorted(item for item, _ in failures) == [1, 2]

    def confirm(item: int, value: int) -> None:
        raise RuntimeError("ledger down")

    with pytest.raises(RuntimeError, match="ledger down"):
        pacing.run_paced(
            range(10), lambda i: i, confirm, limiter=pacing.RateLimiter(1000), retryable=Down
        )


def test_rate_limiter_paces_a_burst() -> None:
    limiter = pacing.RateLimiter(20)
    started = time.monotonic()
    for _ in range(30):
        limiter.acquire()
    assert time.monotonic() - started >= 0.9  # 20 in the first second, 10 more after it


def test_default_rates_are_a_share_of_stripe_limits() -> None:
    assert pacing.default_rate("sk_test_x") < pacing.STRIPE_TEST_MODE_LIMIT
    assert pacing.default_rate("rk_live_x") < pacing.STRIPE_LIVE_METER_EVENTS_LIMIT


def _error(cls: type[stripe.StripeError], status: int, **error: object) -> stripe.StripeError:
    body = {"error": {"type": "invalid_request_error", **error}}
    kwargs: dict[str, object] = {"http_status": status, "json_body": body}
    if "code" in error:
        kwargs["code"] = error["code"]
    if cls is stripe.InvalidRequestError:
        kwargs["param"] = error.get("param")
    return cls(str(error.get("message", "")), **kwargs)  # type: ignore[arg-type]


def test_stripe_answers_are_classified() -> None:
    dup = _error(
        stripe.InvalidRequestError,
        400,
        message="An event already exists with identifier bp-1.",
        param="identifier",
    )
    assert is_duplicate_identifier(dup) and not is_retryable(dup)
    old = _error(
        stripe.InvalidRequestError, 400, message="too old", code="timestamp_too_far_in_past"
    )
    assert not is_duplicate_identifier(old) and not is_retryable(old)
    assert is_retryable(_error(stripe.RateLimitError, 429, message="slow down"))
    assert is_retryable(_error(stripe.APIError, 503, message="unavailable"))
    assert is_retryable(stripe.APIConnectionError("reset"))
