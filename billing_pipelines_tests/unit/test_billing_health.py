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


def by_name(metrics: HealthMetrics, **kw: object) -> dict[str, object]:
    return {v.name: v for v in evaluate(metrics, Thresholds(), **kw)}  # type: ignore[arg-type]


def test_mismatches_alert_only_when_money_is_at_risk_and_name_the_tenants() -> None:
    two = replace(OK, state_mismatches=2)
    costless = by_name(two, revenue_leaks=0, mismatched_tenants=["acme", "globex"])
    verdict = costless["state_mismatches"]
    assert (verdict.passed, verdict.alert) == (False, False)  # type: ignore[attr-defined]
    text = verdict.description  # type: ignore[attr-defined]
    assert "acme, globex" in text and "subscription_remediation_job" in text
    leaking = by_name(two, revenue_leaks=1, mismatched_tenants=["acme", "globex"])
    assert leaking["state_mismatches"].alert  # type: ignore[attr-defined]
    assert "1 served without a charge" in leaking["state_mismatches"].description  # type: ignore[attr-defined]
    many = [f"t{i:02}" for i in range(11)]
    text = by_name(replace(OK, state_mismatches=11), mismatched_tenants=many)[
        "state_mismatches"
    ].description  # type: ignore[attr-defined]
    assert "t07 and 3 more" in text and "t08" not in text


def test_a_late_usage_sync_names_the_first_day_to_push() -> None:
    late = by_name(replace(OK, usage_sync_lag_hours=50.0), reported_through=date(2026, 3, 9))
    text = late["usage_sync_lag"].description  # type: ignore[attr-defined]
    assert "(2026-03-09)" in text and "from 2026-03-10 on" in text
    assert "usage_to_stripe_job" in text and "billing usage push --date" in text
    fine = by_name(OK, reported_through=date(2026, 3, 9))["usage_sync_lag"]
    assert "Next:" not in fine.description  # type: ignore[attr-defined]
