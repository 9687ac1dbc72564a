"""Billing health as the Dagster UI shows it: one number per metric (plotted over
materializations), rates in percent, and each threshold beside its value."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from billing_pipelines.lib.reconciliation.health import HealthMetrics, Thresholds, Verdict
from billing_pipelines.lib.tables import Column, Table, count

# Metadata key of each rate, in percent (0-100) so the plot reads like the thresholds.
PERCENT_KEYS = {
    "webhook_success_rate": "webhook_success_percent",
    "first_attempt_success_rate": "first_attempt_payment_success_percent",
}


def _percent(rate: float) -> float:
    return round(rate * 100, 2)


def plotted_values(metrics: HealthMetrics) -> dict[str, float | int]:
    """One number per metric; a metric without data today is left out rather than plotted as
    zero."""
    out: dict[str, float | int] = {}
    for key, value in vars(metrics).items():
        if key == "day" or value is None or isinstance(value, bool):
            continue
        if key in PERCENT_KEYS:
            out[PERCENT_KEYS[key]] = _percent(float(value))
        elif isinstance(value, float):
            out[key] = round(value, 2)
        else:
            out[key] = int(value)
    return out


def limits(name: str, t: Thresholds) -> tuple[str, str, float, float]:
    """(target text, alert text, target number, alert number) of one check, in its unit."""
    if name == "webhook_success_rate":
        a, b = _percent(t.webhook_success_target), _percent(t.webhook_success_alert)
        return f">= {a:g} %", f"below {b:g} %", a, b
    if name == "first_attempt_payment_success_rate":
        a, b = _percent(t.payment_success_target), _percent(t.payment_success_alert)
        return f">= {a:g} %", f"below {b:g} %", a, b
    if name == "usage_sync_lag":
        h = t.usage_sync_lag_hours
        return f"<= {h:g} h", f"above {h:g} h", h, h
    n = t.invoice_failures if name == "invoice_generation_failures" else t.state_mismatches
    return f"<= {n}", f"above {n}", n, n


def value_text(name: str, value: float | int | None) -> str:
    """The checked value in its unit: percent, hours or a count."""
    if value is None:
        return "no data"
    if name in ("webhook_success_rate", "first_attempt_payment_success_rate"):
        return f"{_percent(float(value)):.2f} %"
    if name == "usage_sync_lag":
        return f"{float(value):,.1f} h"
    return count(int(value))


def check_value(name: str, value: float | int | None) -> float | None:
    """The checked value as a number in the unit of its thresholds (rates in percent)."""
    if value is None:
        return None
    if name in ("webhook_success_rate", "first_attempt_payment_success_rate"):
        return _percent(float(value))
    return float(value)


def _status(v: Verdict) -> str:
    if v.value is None:
        return "no data"
    if v.passed:
        return "ok"
    return "alert" if v.alert else "warning"


THRESHOLD_COLUMNS = [
    Column("metric", "What is measured (the asset check of the same name)."),
    Column("value", "Today's value (rates in percent)."),
    Column("target", "Where it should be; outside it the check warns."),
    Column("alert", "Where the check fails as an alert (ERROR)."),
    Column("status", "ok, warning, alert, or no data today."),
]


def thresholds_table(verdicts: Iterable[Verdict], t: Thresholds) -> Table:
    """Each checked metric with its value, target and alert level side by side."""
    table = Table(list(THRESHOLD_COLUMNS))
    for v in verdicts:
        target, alert, _, _ = limits(v.name, t)
        table.add(
            metric=v.name,
            value=value_text(v.name, v.value),
            target=target,
            alert=alert,
            status=_status(v),
        )
    return table


HISTORY_COLUMNS = [
    Column("day", "UTC day."),
    Column("webhook_success", "Webhook events processed without failure."),
    Column("webhook_events", "Webhook events finished that day."),
    Column("first_attempt_payment_success", "Invoices paid on the first attempt."),
    Column("usage_sync_lag", "Hours since the newest reported usage day ended."),
    Column("invoice_failures", "Invoices failed to finalize or stuck in draft."),
    Column("state_mismatches", "Tenants that disagree with Stripe."),
    Column("dunning", "Dunning cases: failed, recovered, suspended, still open."),
]


def _rate_text(value: Any) -> str:
    return "" if value is None else f"{_percent(float(value)):.2f} %"


def history_table(series: Iterable[Mapping[str, Any]]) -> Table:
    """The stored daily series (oldest first) for reading; the plots come from the numbers."""
    table = Table(list(HISTORY_COLUMNS))
    for row in series:
        lag = row.get("usage_sync_lag_hours")
        table.add(
            day=str(row["day"]),
            webhook_success=_rate_text(row.get("webhook_success_rate")),
            webhook_events=count(row.get("webhook_events")),
            first_attempt_payment_success=_rate_text(row.get("first_attempt_success_rate")),
            usage_sync_lag="" if lag is None else f"{float(lag):,.1f} h",
            invoice_failures=count(row.get("invoice_failures")),
            state_mismatches=count(row.get("state_mismatches")),
            dunning=(
                f"{row.get('dunning_failed', 0)} failed, {row.get('dunning_recovered', 0)} "
                f"recovered, {row.get('dunning_suspended', 0)} suspended, "
                f"{row.get('dunning_open', 0)} open"
            ),
        )
    return table
