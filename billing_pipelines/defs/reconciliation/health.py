"""Billing health: the daily metrics series the Dagster UI plots, checked against DESIGN.md."""

from datetime import UTC, datetime

import dagster as dg

from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    subscription_state_diff,
)
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib import billing_health as health
from billing_pipelines.settings import load_settings

HEALTH_CHECKS = (
    "webhook_success_rate",
    "first_attempt_payment_success_rate",
    "usage_sync_lag",
    "invoice_generation_failures",
    "state_mismatches",
)


@dg.asset(
    deps=[subscription_state_diff, stripe_invoice_snapshot],
    group_name="reconciliation",
    kinds={"postgres"},
    tags={"domain": "reconciliation"},
    check_specs=[
        dg.AssetCheckSpec(name, asset="billing_health", description=f"{name} within threshold")
        for name in HEALTH_CHECKS
    ],
)
def billing_health(
    context: dg.AssetExecutionContext, billing_db: BillingDatabase
) -> dg.MaterializeResult:
    """Webhook and payment success, usage sync lag, invoice failures, mismatches, dunning funnel."""
    now = datetime.now(UTC)
    day = health.utc_today(now)
    thresholds = health.Thresholds(usage_sync_lag_hours=load_settings().usage_sync_lag_hours)
    with billing_db.transaction() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM subscription_state_findings WHERE snapshot_date = "
            "(SELECT max(snapshot_date) FROM subscription_state_findings) "
            "AND category <> 'customer_without_tenant'"
        ).fetchone()
        mismatches = int(row["n"]) if row else 0
        metrics = health.compute(conn, day, now=now, state_mismatches=mismatches)
        health.store(conn, metrics)
        series = health.series(conn, day)
    verdicts = health.evaluate(metrics, thresholds)
    numbers: dict[str, dg.MetadataValue] = {}
    for key, value in vars(metrics).items():
        if isinstance(value, bool) or value is None or key == "day":
            continue  # no data today: left out rather than plotted as zero
        numbers[key] = (
            dg.MetadataValue.float(float(value))
            if isinstance(value, float)
            else dg.MetadataValue.int(int(value))
        )
    context.log.info("billing health %s: %s", day, {k: v.value for k, v in numbers.items()})
    return dg.MaterializeResult(
        metadata={
            "day": dg.MetadataValue.text(day.isoformat()),
            **numbers,
            "series": dg.MetadataValue.json({"days": series}),
            "dunning_funnel": dg.MetadataValue.md(
                f"failed {metrics.dunning_failed} -> recovered {metrics.dunning_recovered}, "
                f"suspended {metrics.dunning_suspended}, still open {metrics.dunning_open}"
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=v.name,
                passed=v.passed,
                severity=dg.AssetCheckSeverity.ERROR if v.alert else dg.AssetCheckSeverity.WARN,
                description=v.description,
                metadata={}
                if v.value is None
                else {"value": dg.MetadataValue.float(float(v.value))},
            )
            for v in verdicts
        ],
    )
