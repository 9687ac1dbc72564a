"""billing_health: one plotted number per metric, thresholds beside values, the daily series,
and threshold checks that fail, against a fresh embedded PostgreSQL database."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import pytest

from billing_pipelines.defs.reconciliation.assets import billing_health
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines_tests.webhook_harness import query


def webhook_events(db_url: str, prefix: str, processed: int, dead: int) -> None:
    for i in range(processed + dead):
        query(
            db_url,
            "INSERT INTO webhook_events (event_id, event_type, payload, status) "
            "VALUES (%s, 'invoice.paid', '{}'::jsonb, %s)",
            (f"{prefix}{i}", "processed" if i < processed else "dead"),
        )


def delivered_day(db_url: str, days_ago: int) -> None:
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    query(
        db_url,
        "INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value, value_version, "
        "identifier, stripe_customer_id, meter_event_name, status, delivered_at) "
        "VALUES ('t1', 'queries', %s, 5, 1, %s, 'cus_1', 'rag_api_queries', 'delivered', now())",
        (day, f"id-{day}"),
    )


def run(
    db_url: str, instance: dg.DagsterInstance | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    result = dg.materialize(
        [billing_health], resources={"billing_db": BillingDatabase(url=db_url)}, instance=instance
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("billing_health")
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    values: dict[str, Any] = {}
    for key, entry in mat.metadata.items():
        if isinstance(entry, dg.TableMetadataValue):
            values[key] = [dict(r.data) for r in entry.records]
        else:
            values[key] = entry.value
    return values, checks


def test_billing_health_keeps_a_daily_series_and_fails_checks_past_thresholds(
    billing_db_url: str,
) -> None:
    today = datetime.now(UTC).date()
    for back in (2, 1):  # two earlier days of the series
        query(
            billing_db_url,
            "INSERT INTO billing_health_daily (day, webhook_events, webhook_success_rate, "
            "payment_first_attempts, invoice_failures, state_mismatches, dunning_failed, "
            "dunning_recovered, dunning_suspended, dunning_open) "
            "VALUES (%s, 10, 1.0, 0, 0, 0, 0, 0, 0, 0)",
            (today - timedelta(days=back),),
        )
    webhook_events(billing_db_url, "evt_ok_", processed=100, dead=0)
    delivered_day(billing_db_url, 1)  # yesterday is in Stripe: lag below 6 h only early in a day
    healthy, checks = run(billing_db_url)
    # Rates in percent, one number per metric; no 0-1 rate beside it.
    assert healthy["webhook_success_percent"] == 100.0 and healthy["webhook_events"] == 100
    assert "webhook_success_rate" not in healthy and "series" not in healthy
    assert "first_attempt_payment_success_percent" not in healthy  # no invoices: not plotted
    assert checks["webhook_success_rate"].passed
    assert checks["state_mismatches"].passed and checks["invoice_generation_failures"].passed
    series = healthy["history"]
    assert [row["day"] for row in series] == [
        (today - timedelta(days=2)).isoformat(),
        (today - timedelta(days=1)).isoformat(),
        today.isoformat(),
    ]
    assert series[-1]["webhook_events"] == "100" and series[-1]["webhook_success"] == "100.00 %"
    limits = {row["metric"]: row for row in healthy["thresholds"]}
    assert limits["webhook_success_rate"] == {
        "metric": "webhook_success_rate",
        "value": "100.00 %",
        "target": ">= 99 %",
        "alert": "below 97 %",
        "status": "ok",
    }
    assert limits["first_attempt_payment_success_rate"]["status"] == "no data"

    # 8 dead letters among 108 events: 92.6 %, below the 97 % alert line.
    webhook_events(billing_db_url, "evt_dead_", processed=0, dead=8)
    query(billing_db_url, "DELETE FROM usage_report_ledger")
    delivered_day(billing_db_url, 3)  # newest delivered usage is 2 days old: > 6 h lag
    query(
        billing_db_url,
        "INSERT INTO subscription_state_findings (snapshot_date, category, revenue_leak, "
        "tenant_id, detail) VALUES (%s, 'canceled_in_stripe_active_locally', true, 't9', 'x')",
        (today,),
    )
    sick, checks = run(billing_db_url)
    assert sick["webhook_success_percent"] == 92.59  # 100 of 108
    webhook = checks["webhook_success_rate"]
    assert not webhook.passed and webhook.severity == dg.AssetCheckSeverity.ERROR
    assert {k: v.value for k, v in webhook.metadata.items()} == {
        "value": 92.59,
        "target": 99.0,
        "alert_level": 97.0,
    }
    limits = {row["metric"]: row for row in sick["thresholds"]}
    assert (limits["webhook_success_rate"]["value"], limits["webhook_success_rate"]["status"]) == (
        "92.59 %",
        "alert",
    )
    assert limits["usage_sync_lag"]["status"] == "alert"
    assert limits["usage_sync_lag"]["target"] == "<= 6 h"
    lag = checks["usage_sync_lag"]
    assert not lag.passed and lag.severity == dg.AssetCheckSeverity.ERROR
    assert sick["usage_sync_lag_hours"] > 48
    assert not checks["state_mismatches"].passed and sick["state_mismatches"] == 1
    assert checks["first_attempt_payment_success_rate"].passed  # no invoices: no data, no alarm
    assert len(sick["history"]) == 3  # today's row was replaced, not duplicated
    assert sick["history"][-1]["state_mismatches"] == "1"


def test_usage_sync_lag_threshold_is_a_launchpad_knob_defaulting_to_the_environment(
    billing_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivered_day(billing_db_url, 3)  # newest delivered usage is at least 48 h old

    def lag_check(**config: Any) -> Any:
        result = dg.materialize(
            [billing_health],
            resources={"billing_db": BillingDatabase(url=billing_db_url)},
            run_config={"ops": {"billing_health": {"config": config}}},
        )
        return {e.check_name: e for e in result.get_asset_check_evaluations()}["usage_sync_lag"]

    monkeypatch.setenv("USAGE_SYNC_LAG_HOURS", "6")
    assert not lag_check().passed  # unset: the environment's 6 h, read when the run starts
    assert lag_check(usage_sync_lag_hours=100).passed  # the launchpad value wins
    monkeypatch.setenv("USAGE_SYNC_LAG_HOURS", "100")
    assert lag_check().passed


@pytest.mark.parametrize(
    ("clock", "delivered", "lag_hours"),
    [
        ("2026-03-15T02:00:00+00:00", "2026-03-14", 2.0),
        ("2025-11-30T21:30:00-05:00", "2025-11-30", 2.5),  # 02:30 UTC on Dec 1
    ],
)
def test_health_is_judged_on_the_business_clock(
    billing_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    clock: str,
    delivered: str,
    lag_hours: float,
) -> None:
    """A month simulated on a Stripe test clock is judged on its own days, not today's date."""
    query(
        billing_db_url,
        "INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value, value_version, "
        "identifier, stripe_customer_id, meter_event_name, status, delivered_at) "
        "VALUES ('t1', 'queries', %s, 5, 1, 'id-1', 'cus_1', 'rag_api_queries', 'delivered', "
        "now())",
        (delivered,),
    )
    monkeypatch.setenv("BUSINESS_CLOCK", clock)
    metadata, checks = run(billing_db_url)
    business_day = datetime.fromisoformat(clock).astimezone(UTC).date()
    assert metadata["day"] == business_day.isoformat()
    assert metadata["usage_sync_lag_hours"] == lag_hours
    assert checks["usage_sync_lag"].passed
    rows = query(billing_db_url, "SELECT day FROM billing_health_daily")
    assert [r["day"] for r in rows] == [business_day]
    # The same ledger judged on the wall clock is months late: the setting is what changed it.
    monkeypatch.delenv("BUSINESS_CLOCK")
    _, wall = run(billing_db_url)
    assert not wall["usage_sync_lag"].passed
    assert f"from {date.fromisoformat(delivered) + timedelta(days=1)} on" in str(
        wall["usage_sync_lag"].description
    )


def test_a_quiet_day_that_was_pushed_is_not_late(
    billing_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day without usage sends nothing to Stripe; its completed push still counts as synced."""
    query(
        billing_db_url,
        "INSERT INTO usage_report_ledger (tenant_id, metric, usage_date, value, value_version, "
        "identifier, stripe_customer_id, meter_event_name, status, delivered_at) "
        "VALUES ('t1', 'queries', '2026-05-20', 5, 1, 'id-q', 'cus_1', 'rag_api_queries', "
        "'delivered', now())",
    )
    monkeypatch.setenv("BUSINESS_CLOCK", "2026-05-26T03:00:00+00:00")
    instance = dg.DagsterInstance.ephemeral()
    _, late = run(billing_db_url, instance)
    assert not late["usage_sync_lag"].passed  # only the ledger: 5 days and 3 hours behind
    assert "from 2026-05-21 on" in str(late["usage_sync_lag"].description)
    for day in ("2026-05-21", "2026-05-22", "2026-05-23", "2026-05-24", "2026-05-25"):
        instance.report_runless_asset_event(
            dg.AssetMaterialization("stripe_meter_reports", partition=day)
        )
    metadata, synced = run(billing_db_url, instance)
    assert synced["usage_sync_lag"].passed
    assert metadata["usage_sync_lag_hours"] == 3.0
