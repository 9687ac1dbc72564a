"""Reconciliation runs: the daily snapshot-diff-audit job and the remediation job."""

import dagster as dg
from pydantic import Field

from billing_pipelines.defs.reconciliation.assets import (
    billing_health,
    stripe_invoice_snapshot,
    stripe_subscription_snapshot,
    subscription_state_diff,
    usage_invoice_audit,
)
from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.lib.alerts import channels as alerting
from billing_pipelines.lib.catalog.plans import load_catalog
from billing_pipelines.lib.markdown import records_table
from billing_pipelines.lib.reconciliation import remediation
from billing_pipelines.lib.reconciliation.late_billing import bill_late_usage
from billing_pipelines.settings import load_settings


class RemediationConfig(dg.Config):
    """Dry run unless an operator unticks it; optionally only some tenants."""

    dry_run: bool = True
    tenant_ids: list[str] = []
    alert_email: str | None = Field(
        default=None,
        description="Who is told of the changes (admin alert email); unset: ALERT_EMAIL.",
    )


@dg.op(tags={"domain": "reconciliation"})
def remediate_subscription_state(
    context: dg.OpExecutionContext,
    config: RemediationConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.Output[dict[str, int]]:
    """Converge every tenant the newest diff flagged to its current Stripe subscription."""
    settings = load_settings()
    alert_email = settings.alert_email if config.alert_email is None else config.alert_email
    actor = f"reconciliation remediation (run {context.run.run_id[:8]})"
    with billing_db.transaction() as conn:
        targets = remediation.latest_targets(conn, only=set(config.tenant_ids) or None)
    outcomes = remediation.remediate(
        billing_db.transaction,
        stripe.client(),
        load_catalog(),
        targets,
        actor=actor,
        dry_run=config.dry_run,
        alert_email=alert_email,
    )
    changed = [o for o in outcomes if o.change is not None]
    for o in outcomes:
        context.log.info(o.line(config.dry_run))
    if changed and not config.dry_run:
        # The chat webhook URL is a secret: it stays in the environment, never in run config.
        chat = settings.alert_chat_webhook_url
        channel = alerting.AlertChannel(
            email=alert_email,
            chat_webhook_url=chat.get_secret_value() if chat else None,
            ui_url=settings.dagster_ui_url,
        )
        with billing_db.transaction() as conn:
            alerting.raise_failure(
                conn, remediation.admin_alert(context.run.run_id, changed, channel.ui_url), channel
            )
    counts = {
        "flagged_tenants": len(targets),
        "changed" if not config.dry_run else "would_change": len(changed),
        "unchanged": len(outcomes) - len(changed),
    }
    return dg.Output(
        counts,
        metadata={
            "dry_run": dg.MetadataValue.bool(config.dry_run),
            **{k: dg.MetadataValue.int(v) for k, v in counts.items()},
            "changes": dg.MetadataValue.md(remediation.table(outcomes, config.dry_run)),
        },
    )


@dg.job(tags={"domain": "reconciliation"})
def subscription_remediation_job() -> None:
    """Apply Stripe's subscription state to flagged tenants (dry run unless configured)."""
    remediate_subscription_state()


@dg.op(tags={"domain": "reconciliation"})
def bill_late_usage_op(
    context: dg.OpExecutionContext, billing_db: BillingDatabase, stripe: StripeResource
) -> dg.Output[dict[str, int]]:
    """Bill the newest usage audit's under-charges as correction lines on the next invoices."""
    result = bill_late_usage(billing_db.transaction, stripe.client(), load_catalog().plans)
    for correction, item_id in result.created:
        context.log.info("%s: %s (%s)", correction.tenant_id, correction.description, item_id)
    counts = {
        "corrections": len(result.created),
        "cents": result.cents,
        "already_billed": result.already_billed,
    }
    return dg.Output(
        counts,
        metadata={
            **{k: dg.MetadataValue.int(v) for k, v in counts.items()},
            "created": dg.MetadataValue.md(
                records_table(
                    [
                        {
                            "tenant": c.tenant_id,
                            "description": c.description,
                            "cents": c.amount,
                            "invoice_item": item_id,
                        }
                        for c, item_id in result.created
                    ]
                )
            ),
        },
    )


@dg.job(tags={"domain": "reconciliation"})
def late_usage_billing_job() -> None:
    """Bill usage that arrived after its period's invoice was final, on the next invoice."""
    bill_late_usage_op()


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
