"""The plan catalog in Stripe: products, prices and meters synced from plans.toml."""

import dagster as dg

from billing_pipelines.defs.resources import STRIPE_POOL, StripeResource
from billing_pipelines.defs.sources.assets import plan_catalog
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.stripe.catalog import sync_catalog


@dg.asset(
    deps=[plan_catalog],
    group_name="catalog",
    kinds={"stripe"},
    tags={"domain": "catalog"},
    pool=STRIPE_POOL,
)
def stripe_catalog(
    context: dg.AssetExecutionContext, stripe: StripeResource
) -> dg.MaterializeResult:
    """The plan catalog as Stripe products, immutable prices by lookup key, and usage meters."""
    report = sync_catalog(stripe.client(), load_catalog())
    for change in report.changes:
        context.log.info(change)
    return dg.MaterializeResult(
        metadata={
            "changes": dg.MetadataValue.int(len(report.changes)),
            "unchanged": dg.MetadataValue.int(report.unchanged),
            "change_log": dg.MetadataValue.md(
                "\n".join(f"- {c}" for c in report.changes) or "no changes"
            ),
            "prices": dg.MetadataValue.json(report.price_ids),
            "meters": dg.MetadataValue.json(report.meter_ids),
        }
    )
