"""Daily per-tenant usage: the warehouse truth that every bill is computed from."""

from datetime import date

import dagster as dg

from billing_pipelines.defs.partitions import daily_partitions
from billing_pipelines.defs.resources import BillingDatabase, UsageWarehouse


@dg.asset(
    partitions_def=daily_partitions,
    group_name="usage",
    kinds={"clickhouse", "postgres"},
    tags={"domain": "usage"},
)
def daily_tenant_usage(
    context: dg.AssetExecutionContext, warehouse: UsageWarehouse, billing_db: BillingDatabase
) -> dg.MaterializeResult:
    """Billable usage per tenant for one UTC day: distinct queries, tokens and embeddings."""
    day = date.fromisoformat(context.partition_key)
    usage = warehouse.daily_usage(day)
    stored = billing_db.replace_daily_usage(day, usage)
    context.log.info("stored %d tenants' usage for %s", stored, day)
    return dg.MaterializeResult(
        metadata={
            "tenants": dg.MetadataValue.int(stored),
            "billable_queries": dg.MetadataValue.int(int(usage["billable_queries"].sum())),
            "tokens": dg.MetadataValue.int(int(usage["tokens"].sum())),
            "duplicate_events_removed": dg.MetadataValue.int(int(usage["duplicate_events"].sum())),
            "preview": dg.MetadataValue.md(usage.head(10).to_markdown(index=False)),
        }
    )


daily_usage_job = dg.define_asset_job(
    "daily_usage_job",
    selection=[daily_tenant_usage],
    description="Compute and store one UTC day of per-tenant usage.",
)
