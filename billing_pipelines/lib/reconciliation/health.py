"""Billing health: one row of daily metrics, their thresholds and the time series.

Thresholds: webhook success >= 99 % (alert below 97 %), first-attempt payment success >= 85 %
(alert below 80 %), usage sync lag <= 6 h, invoice generation failures 0, state mismatches 0.
A metric without data for the day (no webhooks, no payment attempts) is reported as None and
does not fail its check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.usage.warehouse import day_bounds

if TYPE_CHECKING:
    import psycopg

Conn: TypeAlias = "psycopg.Connection[Any]"


@dataclass(frozen=True)
class HealthMetrics:
    """One day of billing health."""

    day: date
    webhook_events: int
    webhook_success_rate: float | None
    payment_first_attempts: int
    first_attempt_success_rate: float | None
    usage_sync_lag_hours: float | None
    invoice_failures: int
    state_mismatches: int
    dunning_failed: int
    dunning_recovered: int
    dunning_suspended: int
    dunning_open: int


@dataclass(frozen=True)
class Thresholds:
    """Target (WARN below/above it) and alert (ERROR) levels."""

    webhook_success_target: float = 0.99
    webhook_success_alert: float = 0.97
    payment_success_target: float = 0.85
    payment_success_alert: float = 0.80
    usage_sync_lag_hours: float = 6.0
    invoice_failures: int = 0
    state_mismatches: int = 0


@dataclass(frozen=True)
class Verdict:
    """A check outcome: passed, and if not, whether it is an alert (ERROR) or a warning."""

    name: str
    passed: bool
    alert: bool
    value: float | int | None
    description: str


# What an operator does when a health check fails (appended to the failing verdict only).
NEXT_STEPS = {
    "webhook_success_rate": (
        "read the failed and dead-lettered rows of webhook_events (status failed/dead, "
        "last_error) and the failed webhook_events_job runs; fix the cause, the queue retries"
    ),
    "first_attempt_payment_success_rate": (
        "card declines: the dunning ladder is handling them; check dunning_sensor is running "
        "and the decline reasons on the invoices in Stripe"
    ),
    "invoice_generation_failures": (
        "subscription_state_diff's no_unpaid_service check names the invoices; fix each "
        "finalization error in Stripe and finalize it"
    ),
    "state_mismatches": (
        "subscription_state_diff's tenant_db_matches_stripe check names the tenants; launch "
        "subscription_remediation_job (dry run first)"
    ),
}


def _rate(metric: str, value: float | None, target: float, alert: float) -> Verdict:
    if value is None:
        return Verdict(metric, True, False, None, f"no data today for {metric}")
    text = f"{value:.2%} (target >= {target:.0%}, alert below {alert:.0%})"
    if value < target:
        text += f". Next: {NEXT_STEPS[metric]}."
    return Verdict(metric, value >= target, value < alert, value, text)


def _lag_text(lag: float | None, limit: float, reported_through: date | None) -> str:
    if lag is None:
        return "no usage reported yet"
    newest = f" ({reported_through})" if reported_through else ""
    text = f"{lag:.1f} h since the newest reported day{newest} ended (limit {limit:g} h)"
    if lag <= limit:
        return text
    first = f"{reported_through + timedelta(days=1)}" if reported_through else "the next day"
    return (
        f"{text}. Next: push the days from {first} on: launch usage_to_stripe_job for those "
        "partitions (or `billing usage push --date YYYY-MM-DD` per day), and check the "
        "usage_to_stripe_daily schedule is running"
    )


def evaluate(
    m: HealthMetrics,
    t: Thresholds,
    *,
    revenue_leaks: int | None = None,
    mismatched_tenants: Sequence[str] = (),
    reported_through: date | None = None,
) -> list[Verdict]:
    """Every threshold checked against one day's metrics.

    `revenue_leaks` (mismatches where a tenant is served without a charge), when known, decides
    whether mismatches are an alert: a difference that costs nothing yet is a warning.
    """
    lag = m.usage_sync_lag_hours
    mismatches = m.state_mismatches > t.state_mismatches
    mismatch_text = f"{m.state_mismatches} tenant(s) disagree with Stripe"
    if mismatched_tenants:
        mismatch_text += f" ({', '.join(mismatched_tenants[:8])}"
        mismatch_text += (
            f" and {len(mismatched_tenants) - 8} more)" if len(mismatched_tenants) > 8 else ")"
        )
    if revenue_leaks:
        mismatch_text += f", {revenue_leaks} served without a charge"
    if mismatches:
        mismatch_text += f". Next: {NEXT_STEPS['state_mismatches']}."
    return [
        _rate(
            "webhook_success_rate",
            m.webhook_success_rate,
            t.webhook_success_target,
            t.webhook_success_alert,
        ),
        _rate(
            "first_attempt_payment_success_rate",
            m.first_attempt_success_rate,
            t.payment_success_target,
            t.payment_success_alert,
        ),
        Verdict(
            "usage_sync_lag",
            lag is None or lag <= t.usage_sync_lag_hours,
            lag is not None and lag > t.usage_sync_lag_hours,
            lag,
            _lag_text(lag, t.usage_sync_lag_hours, reported_through),
        ),
        Verdict(
            "invoice_generation_failures",
            m.invoice_failures <= t.invoice_failures,
            m.invoice_failures > t.invoice_failures,
            m.invoice_failures,
            f"{m.invoice_failures} invoice(s) failed to finalize or are stuck in draft"
            + (
                f". Next: {NEXT_STEPS['invoice_generation_failures']}."
                if m.invoice_failures > t.invoice_failures
                else ""
            ),
        ),
        Verdict(
            "state_mismatches",
            not mismatches,
            mismatches if revenue_leaks is None else mismatches and revenue_leaks > 0,
            m.state_mismatches,
            mismatch_text,
        ),
    ]


# ---- computing from the billing database -------------------------------------------------------


def compute(
    conn: Conn,
    day: date,
    *,
    now: datetime,
    state_mismatches: int,
    lookback_days: int = 30,
    synced_through: date | None = None,
) -> HealthMetrics:
    """The metrics for `day` from the queue, the snapshots, the ledger and dunning cases.

    `synced_through` is the newest day whose push completed (a day without usage sends nothing,
    so the ledger alone would call a quiet day late).
    """
    start, end = day_bounds(day)
    webhooks = conn.execute(
        """
        SELECT count(*) FILTER (WHERE status IN ('processed', 'ignored')) AS ok,
               count(*) FILTER (WHERE status IN ('processed', 'ignored', 'failed', 'dead')) AS done
        FROM webhook_events WHERE received_at >= %s AND received_at < %s
        """,
        (start, end),
    ).fetchone()
    assert webhooks is not None
    # First-attempt success: of the invoices whose first charge was attempted in the window
    # (finalized with something to pay), the share paid without a retry.
    since = end - timedelta(days=lookback_days)
    payments = conn.execute(
        """
        SELECT count(*) AS attempted,
               count(*) FILTER (WHERE status = 'paid' AND attempt_count <= 1) AS first_ok
        FROM stripe_invoice_snapshots
        WHERE snapshot_date = (SELECT max(snapshot_date) FROM stripe_invoice_snapshots
                               WHERE snapshot_date <= %s)
          AND attempted AND amount_due > 0 AND finalized_at >= %s AND finalized_at < %s
        """,
        (day, since, end),
    ).fetchone()
    assert payments is not None
    failures = conn.execute(
        """
        SELECT count(*) AS n FROM stripe_invoice_snapshots
        WHERE snapshot_date = (SELECT max(snapshot_date) FROM stripe_invoice_snapshots
                               WHERE snapshot_date <= %s)
          AND status = 'draft'
          AND (finalization_error IS NOT NULL OR automatically_finalizes_at < %s)
        """,
        (day, now),
    ).fetchone()
    assert failures is not None
    delivered = conn.execute(
        "SELECT max(usage_date) AS d FROM usage_report_ledger WHERE status = 'delivered'"
    ).fetchone()
    lag = None
    newest = [d for d in (delivered["d"] if delivered else None, synced_through) if d is not None]
    if newest:
        _, newest_end = day_bounds(max(newest))
        lag = max(0.0, (now - newest_end).total_seconds() / 3600)
    dunning = conn.execute(
        """
        SELECT count(*) AS failed,
               count(*) FILTER (WHERE c.status = 'resolved' AND c.resolution = 'paid')
                   AS recovered,
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM dunning_actions a
                   WHERE a.invoice_id = c.invoice_id AND a.action = 'suspend')) AS suspended,
               count(*) FILTER (WHERE c.status = 'open') AS open
        FROM dunning_cases c WHERE c.first_failed_at >= %s AND c.first_failed_at < %s
        """,
        (since, end),
    ).fetchone()
    assert dunning is not None
    return HealthMetrics(
        day=day,
        webhook_events=int(webhooks["done"]),
        webhook_success_rate=(webhooks["ok"] / webhooks["done"]) if webhooks["done"] else None,
        payment_first_attempts=int(payments["attempted"]),
        first_attempt_success_rate=(
            payments["first_ok"] / payments["attempted"] if payments["attempted"] else None
        ),
        usage_sync_lag_hours=None if lag is None else round(lag, 2),
        invoice_failures=int(failures["n"]),
        state_mismatches=state_mismatches,
        dunning_failed=int(dunning["failed"]),
        dunning_recovered=int(dunning["recovered"]),
        dunning_suspended=int(dunning["suspended"]),
        dunning_open=int(dunning["open"]),
    )


_COLUMNS = tuple(HealthMetrics.__dataclass_fields__)


def store(conn: Conn, metrics: HealthMetrics) -> None:
    """Upsert the day's row of the series."""
    values = asdict(metrics)
    columns = ", ".join(_COLUMNS)
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS if c != "day")
    conn.execute(
        # Column names come from the dataclass, never from input.
        f"INSERT INTO billing_health_daily ({columns}) VALUES ({placeholders}) "  # noqa: S608
        f"ON CONFLICT (day) DO UPDATE SET {updates}, computed_at = now()",
        tuple(values[c] for c in _COLUMNS),
    )


def series(conn: Conn, until: date, days: int = 30) -> list[dict[str, Any]]:
    """The last `days` rows of the series, oldest first, as JSON-safe dicts."""
    rows = conn.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM billing_health_daily "  # noqa: S608
        "WHERE day > %s AND day <= %s ORDER BY day",
        (until - timedelta(days=days), until),
    ).fetchall()
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, Decimal):
                item[key] = float(value)
            elif isinstance(value, date):
                item[key] = value.isoformat()
            else:
                item[key] = value
        out.append(item)
    return out


def utc_today(now: datetime | None = None) -> date:
    """Today's UTC date (the health row a run writes)."""
    return (now or datetime.now(UTC)).astimezone(UTC).date()
