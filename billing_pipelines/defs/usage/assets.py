"""Daily per-tenant usage: the warehouse truth that every bill is computed from."""

from datetime import date

import dagster as dg

from billing_pipelines.defs import metadata
from billing_pipelines.defs.partitions import daily_partitions
from billing_pipelines.defs.resources import BillingDatabase, UsageWarehouse
from billing_pipelines.defs.sources.assets import tenants, usage_events
from billing_pipelines.lib.usage.schema import validate_daily_usage
from billing_pipelines.lib.usage.tenant_table import usage_by_tenant

USAGE_SCHEMA_CHECK = "usage_matches_schema"


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
                "Types, non-negative counts, one row per tenant and day, known tenant ids: "
                "bad usage is neither stored nor billed."
            ),
        )
    ],
)
def daily_tenant_usage(
    context: dg.AssetExecutionContext, warehouse: UsageWarehouse, billing_db: BillingDatabase
):
    """Billable usage per tenant for one UTC day: distinct queries, tokens and embeddings."""
    day = date.fromisoformat(context.partition_key)
    usage = warehouse.daily_usage(day)
    validation = validate_daily_usage(usage, billing_db.known_tenant_ids())
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
            )
        ],
    )
