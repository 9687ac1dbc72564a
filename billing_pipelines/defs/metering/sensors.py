"""Held usage released: a day is pushed again once a tenant it holds usage for is billable."""

import hashlib
from datetime import UTC, datetime

import dagster as dg

from billing_pipelines.defs.metering.jobs import usage_to_stripe_job
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.usage.held import days_to_release


@dg.sensor(
    job=usage_to_stripe_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def held_usage_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One push per day and set of formerly unknown tenants now billable (run_key = both)."""
    with billing_db.transaction() as conn:
        due = days_to_release(conn, datetime.now(UTC).date())
    if not due:
        return dg.SkipReason("no held usage of a tenant that is billable now")
    requests = []
    for day, tenants in sorted(due.items()):
        digest = hashlib.sha256("\n".join(tenants).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"held-{day.isoformat()}-{digest}",
                partition_key=day.isoformat(),
                tags={"held_tenants": str(len(tenants))},
            )
        )
    return dg.SensorResult(run_requests=requests)
