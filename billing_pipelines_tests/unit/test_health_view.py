"""Billing health as shown: rates in percent, one number per metric, thresholds beside values."""

from __future__ import annotations

from datetime import date

from billing_pipelines.lib.reconciliation import health_view
from billing_pipelines.lib.reconciliation.health import HealthMetrics, Thresholds, evaluate


def metrics(**changes: object) -> HealthMetrics:
    base: dict[str, object] = {
        "day": date(2026, 7, 9),
        "webhook_events": 12_345,
        "webhook_success_rate": 0.9876,
        "payment_first_attempts": 40,
        "first_attempt_success_rate": None,
        "usage_sync_lag_hours": 7.25,
        "invoice_failures": 0,
        "state_mismatches": 3,
        "dunning_failed": 6,
        "dunning_recovered": 2,
        "dunning_suspended": 1,
        "dunning_open": 3,
    }
    base.update(changes)
    return HealthMetrics(**base)  # type: ignore[arg-type]


def test_one_number_per_metric_with_rates_in_percent_and_no_data_left_out() -> None:
    values = health_view.plotted_values(metrics())
    assert values == {
        "webhook_events": 12_345,
        "webhook_success_percent": 98.76,
        "payment_first_attempts": 40,
        "usage_sync_lag_hours": 7.25,
        "invoice_failures": 0,
        "state_mismatches": 3,
        "dunning_failed": 6,
        "dunning_recovered": 2,
        "dunning_suspended": 1,
        "dunning_open": 3,
    }
    paid = health_view.plotted_values(metrics(first_attempt_success_rate=0.8))
    assert paid["first_attempt_payment_success_percent"] == 80.0


def test_thresholds_sit_beside_values_in_the_same_unit() -> None:
    t = Thresholds(usage_sync_lag_hours=6.5)
    m = metrics(webhook_success_rate=0.96)
    rows = {r["metric"]: r for r in health_view.thresholds_table(evaluate(m, t), t).rows}
    assert rows["webhook_success_rate"] == {
        "metric": "webhook_success_rate",
        "value": "96.00 %",
        "target": ">= 99 %",
        "alert": "below 97 %",
        "status": "alert",
    }
    assert rows["first_attempt_payment_success_rate"]["value"] == "no data"
    assert rows["first_attempt_payment_success_rate"]["status"] == "no data"
    assert (rows["usage_sync_lag"]["value"], rows["usage_sync_lag"]["target"]) == (
        "7.2 h",
        "<= 6.5 h",
    )
    assert rows["usage_sync_lag"]["status"] == "alert"
    assert (rows["state_mismatches"]["value"], rows["state_mismatches"]["status"]) == (
        "3",
        "alert",
    )
    assert rows["invoice_generation_failures"]["status"] == "ok"
    # Between the alert line and the target: a warning.
    warn = metrics(webhook_success_rate=0.98)
    rows = {r["metric"]: r for r in health_view.thresholds_table(evaluate(warn, t), t).rows}
    assert rows["webhook_success_rate"]["status"] == "warning"
    assert health_view.check_value("webhook_success_rate", 0.98) == 98.0
    assert health_view.limits("first_attempt_payment_success_rate", t)[2:] == (85.0, 80.0)


def test_history_reads_in_percent_hours_and_formatted_counts() -> None:
    rows = health_view.history_table(
        [
            {
                "day": "2026-07-08",
                "webhook_events": 1_234_567,
                "webhook_success_rate": 1.0,
                "first_attempt_success_rate": None,
                "usage_sync_lag_hours": 30.0,
                "invoice_failures": 0,
                "state_mismatches": 0,
                "dunning_failed": 6,
                "dunning_recovered": 2,
                "dunning_suspended": 1,
                "dunning_open": 3,
            }
        ]
    ).rows
    assert rows == [
        {
            "day": "2026-07-08",
            "webhook_success": "100.00 %",
            "webhook_events": "1,234,567",
            "first_attempt_payment_success": "",
            "usage_sync_lag": "30.0 h",
            "invoice_failures": "0",
            "state_mismatches": "0",
            "dunning": "6 failed, 2 recovered, 1 suspended, 3 open",
        }
    ]
