"""The meter push's client path against the sandbox: what goes out and what comes back."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import stripe
from billing_sandbox.stripe import SandboxHandle

from billing_pipelines.lib.metering.planning import DELIVERED, OUT_OF_WINDOW, MeterReport
from billing_pipelines.lib.stripe import meters, pacing

EVENT = "bench_queries"


def _report(customer: str, identifier: str, value: int, day: date) -> MeterReport:
    timestamp = int(datetime.combine(day, datetime.min.time(), UTC).timestamp()) + 7 * 3600 + 11
    return MeterReport(
        tenant_id="t-1",
        metric="queries",
        usage_date=day,
        value=value,
        value_version=1,
        identifier=identifier,
        stripe_customer_id=customer,
        event_name=EVENT,
        timestamp=timestamp,
    )


@pytest.fixture
def customer(stripe_client: stripe.StripeClient) -> str:
    stripe_client.v1.billing.meters.create(
        {
            "display_name": EVENT,
            "event_name": EVENT,
            "default_aggregation": {"formula": "sum"},
        }
    )
    return stripe_client.v1.customers.create({}).id


def test_a_meter_event_reaches_stripe_with_its_identifier_value_and_timestamp_once(
    stripe_client: stripe.StripeClient, stripe_sandbox: SandboxHandle, customer: str
) -> None:
    day = datetime.now(UTC).date() - timedelta(days=3)
    report = _report(customer, "t-1:queries:x:1", 4321, day)
    first = meters.send_meter_event(stripe_client, report)
    again = meters.send_meter_event(stripe_client, report)  # same idempotency key: a replay
    assert (first.status, first.duplicate) == (DELIVERED, False)
    assert (again.status, again.duplicate) == (DELIVERED, True)
    (stored,) = stripe_sandbox.state.data.meter_events
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    assert stored["identifier"] == "t-1:queries:x:1"
    assert stored["event_name"] == EVENT
    assert stored["payload"] == {"stripe_customer_id": customer, "value": "4321"}
    assert stored["timestamp"] == int(midnight) + 25_211


def test_a_meter_event_older_than_35_days_is_out_of_window_not_failed(
    stripe_client: stripe.StripeClient, stripe_sandbox: SandboxHandle, customer: str
) -> None:
    day = datetime.now(UTC).date() - timedelta(days=40)
    outcome = meters.send_meter_event(stripe_client, _report(customer, "old-1", 5, day))
    assert outcome.status == OUT_OF_WINDOW and "timestamp_too_far_in_past" in str(outcome.error)
    assert stripe_sandbox.state.data.meter_events == []


def test_the_sdk_formats_no_request_log_line_that_no_handler_shows(
    stripe_client: stripe.StripeClient,
    customer: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stripe import _util

    formatted: list[dict[str, object]] = []
    logfmt = _util.logfmt

    def counting(props: dict[str, object]) -> str:
        formatted.append(props)
        return str(logfmt(props))

    monkeypatch.setattr(_util, "logfmt", counting)
    monkeypatch.setattr(stripe, "log", None)
    monkeypatch.setattr(_util, "STRIPE_LOG", None)
    day = datetime.now(UTC).date() - timedelta(days=1)
    caplog.set_level(logging.WARNING, logger="stripe")  # the default; restored after the test
    meters.send_meter_event(stripe_client, _report(customer, "quiet-1", 1, day))
    assert formatted == []
    # Whoever asks for the SDK's lines still gets them, as the SDK writes them.
    with caplog.at_level(logging.INFO, logger="stripe"):
        meters.send_meter_event(stripe_client, _report(customer, "loud-1", 2, day))
    lines = [r.getMessage() for r in caplog.records if r.name == "stripe"]
    assert any(
        "message='Request to Stripe api'" in line and "meter_events" in line for line in lines
    )
    assert any("response_code=200" in line for line in lines)
    assert {p["message"] for p in formatted} >= {"Request to Stripe api", "Stripe API response"}


def test_paced_workers_keep_at_most_their_number_in_flight_and_stop_on_a_failed_confirm() -> None:
    in_flight = 0
    most = 0
    started: list[int] = []
    lock = threading.Lock()

    def call(item: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
            started.append(item)
        time.sleep(0.002)
        with lock:
            in_flight -= 1
        return item

    confirmed: list[int] = []
    failures = pacing.run_paced(
        range(300),
        call,
        lambda item, value: confirmed.append(value),
        limiter=pacing.RateLimiter(100_000),
        retryable=TimeoutError,
        workers=5,
    )
    assert failures == [] and sorted(confirmed) == list(range(300))
    assert most <= 5 and sorted(started) == list(range(300))

    # Once a confirmation has failed, no worker starts more than the one call it may already have
    # been handed. Counted against the instant of the failure, not against a guess of how many
    # calls fit before the calling thread ran: on a loaded host that is any number.
    failed = threading.Event()
    late: list[int] = []

    def slow_call(item: int) -> int:
        if failed.is_set():
            with lock:
                late.append(item)
        time.sleep(0.02)  # longer than the calling thread's step from the failure to its stop
        return item

    def confirm(item: int, value: int) -> None:
        failed.set()
        raise RuntimeError("ledger down")

    with pytest.raises(RuntimeError, match="ledger down"):
        pacing.run_paced(
            range(1000),
            slow_call,
            confirm,
            limiter=pacing.RateLimiter(100_000),
            retryable=TimeoutError,
            workers=3,
        )
    assert len(late) <= 3
