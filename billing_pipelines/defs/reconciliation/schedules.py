"""The daily reconciliation run: snapshots, diff, usage audit and billing health."""

import dagster as dg

from billing_pipelines.defs.reconciliation.assets import (
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    subscription_state_diff,
    usage_invoice_audit,
)
from billing_pipelines.defs.reconciliation.health import billing_health

reconciliation_job = dg.define_asset_job(
    "reconciliation_job",
    selection=dg.AssetSelection.assets(
        stripe_subscription_snapshot,
        stripe_invoice_snapshot,
        subscription_state_diff,
        usage_invoice_audit,
        billing_health,
    ),
    description="Snapshot Stripe, diff it against the tenant DB, audit usage, record health.",
)

# After yesterday's usage is in Stripe (usage push schedule) and invoices have finalized.
reconciliation_schedule = dg.ScheduleDefinition(
    name="reconciliation_schedule",
    job=reconciliation_job,
    cron_schedule="30 7 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
