"""Daily per-tenant usage: the warehouse truth that every bill is computed from."""

from datetime import date

import dagster as dg

from billing_pipelines.defs import metadata
from billing_pipelines.defs.alerts.sensors import send as send_alerts
from billing_pipelines.defs.partitions import daily_partitions
from billing_pipelines.defs.resources import BillingDatabase, UsageWarehouse
from billing_pipelines.defs.sources.assets import tenants, usage_events
from billing_pipelines.lib.usage.held import held_summary, held_usage_alert
from billing_pipelines.lib.usage.schema import validate_daily_usage
from billing_pipelines.lib.usage.tenant_table import usage_by_tenant

USAGE_SCHEMA_CHECK = "usage_matches_schema"

HELD_CHECK = "usage_tenants_known"


@dg.asset(
    partitions_def=daily_partitions,
    # Reads the warehouse's events; validates tenant ids against the tenant table.
    deps=[usage_events, tenants],
    group_name="usage",
    kinds={"clickhouse", "postgres"},
    tags={"domain": "usage"},
    check_specs=[
        dg.AssetCheckSpec(
            USAGE_SCHEMA_CHECK,
            asset="daily_tenant_usage",
            blocking=True,
            description=(
                "Types, non-negative counts, one row per tenant and day: bad usage is neither "
                "stored nor billed."
            ),
        ),
        dg.AssetCheckSpec(
            HELD_CHECK,
            asset="daily_tenant_usage",
            description=(
                "Every tenant with usage is known to the billing database; unknown ones are "
                "held (stored, not billed) and pushed once the tenant exists."
            ),
        ),
    ],
)
def daily_tenant_usage(
    context: dg.AssetExecutionContext, warehouse: UsageWarehouse, billing_db: BillingDatabase
):
    """Billable usage per tenant for one UTC day: distinct queries, tokens and embeddings."""
    day = date.fromisoformat(context.partition_key)
    usage = warehouse.daily_usage(day)
    known = billing_db.known_tenant_ids()
    # Usage of a tenant the billing database does not know yet is held, not blocking: it is
    # stored (the push leaves it unbilled) and every known tenant is still billed; once the
    # tenant exists, held_usage_sensor pushes the day again (inside Stripe's 35 days).
    held = usage[~usage["tenant_id"].isin(known)]
    validation = validate_daily_usage(usage, known | set(held["tenant_id"]))
    if not validation.passed:
        # Keep the last good partition in Postgres; fail the blocking check, then the step,
        # so nothing downstream (meter reports) runs on it.
        yield dg.AssetCheckResult(
            check_name=USAGE_SCHEMA_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "failures": dg.MetadataValue.int(len(validation.failure_cases)),
                "failure_cases": dg.MetadataValue.md(
                    validation.failure_cases.head(50).to_markdown(index=False)
                ),
            },
        )
        raise dg.Failure(
            description=f"usage for {day} fails its schema; nothing was stored or billed:\n"
            + validation.summary(),
        )
    stored = billing_db.replace_daily_usage(day, usage)
    context.log.info("stored %d tenants' usage for %s", stored, day)
    held_ids = sorted(str(t) for t in held["tenant_id"])
    if held_ids:
        context.log.warning(
            "%d unknown tenant(s) held for %s: %s", len(held_ids), day, held_summary(held_ids)
        )
        send_alerts(
            billing_db,
            [held_usage_alert(day, held_ids, int(held["billable_queries"].sum()))],
        )
    yield dg.MaterializeResult(
        metadata={
            "tenants": dg.MetadataValue.int(stored),
            "billable_queries": dg.MetadataValue.int(int(usage["billable_queries"].sum())),
            "tokens": dg.MetadataValue.int(int(usage["tokens"].sum())),
            "embeddings": dg.MetadataValue.int(int(usage["embeddings"].sum())),
            "duplicate_events_removed": dg.MetadataValue.int(int(usage["duplicate_events"].sum())),
            "preview": dg.MetadataValue.md(usage.head(10).to_markdown(index=False)),
            "usage_by_tenant": metadata.table(usage_by_tenant(usage)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=USAGE_SCHEMA_CHECK,
                passed=True,
                metadata={"rows": dg.MetadataValue.int(len(usage))},
            ),
            dg.AssetCheckResult(
                check_name=HELD_CHECK,
                passed=not held_ids,
                severity=dg.AssetCheckSeverity.WARN,
                description=(
                    f"{len(held_ids)} unknown tenant(s) held, not billed: {held_summary(held_ids)}"
                    if held_ids
                    else None
                ),
                metadata={
                    "held_tenants": dg.MetadataValue.int(len(held_ids)),
                    "held_queries": dg.MetadataValue.int(int(held["billable_queries"].sum())),
                    "tenants": dg.MetadataValue.md(
                        held[["tenant_id", "billable_queries"]].head(50).to_markdown(index=False)
                        if held_ids
                        else "none"
                    ),
                },
            ),
        ],
    )
