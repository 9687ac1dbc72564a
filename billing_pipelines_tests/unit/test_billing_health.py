"""Billing health thresholds as pure logic."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from billing_pipelines.lib.reconciliation.health import HealthMetrics, Thresholds, evaluate

OK = HealthMetrics(
    day=date(2026, 11, 28),
    webhook_events=1000,
    webhook_success_rate=0.995,
    payment_first_attempts=100,
    first_attempt_success_rate=0.9,
    usage_sync_lag_hours=3.0,
    invoice_failures=0,
    state_mismatches=0,
    dunning_failed=5,
    dunning_recovered=3,
    dunning_suspended=1,
    dunning_open=1,
)


def verdicts(metrics: HealthMetrics) -> dict[str, tuple[bool, bool]]:
    return {v.name: (v.passed, v.alert) for v in evaluate(metrics, Thresholds())}


def test_healthy_day_passes_everything() -> None:
    assert all(passed for passed, _ in verdicts(OK).values())


def test_rates_warn_below_target_and_alert_below_the_alert_line() -> None:
    assert verdicts(replace(OK, webhook_success_rate=0.98))["webhook_success_rate"] == (
        False,
        False,
    )
    assert verdicts(replace(OK, webhook_success_rate=0.96))["webhook_success_rate"] == (False, True)
    name = "first_attempt_payment_success_rate"
    assert verdicts(replace(OK, first_attempt_success_rate=0.84))[name] == (False, False)
    assert verdicts(replace(OK, first_attempt_success_rate=0.79))[name] == (False, True)
    assert verdicts(replace(OK, first_attempt_success_rate=None))[name] == (True, False)


def test_lag_failures_and_mismatches_alert_past_their_limits() -> None:
    assert verdicts(replace(OK, usage_sync_lag_hours=6.0))["usage_sync_lag"] == (True, False)
    assert verdicts(replace(OK, usage_sync_lag_hours=6.5))["usage_sync_lag"] == (False, True)
    assert verdicts(replace(OK, invoice_failures=1))["invoice_generation_failures"] == (False, True)
    assert verdicts(replace(OK, state_mismatches=2))["state_mismatches"] == (False, True)
