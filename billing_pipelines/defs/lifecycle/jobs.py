"""Admin actions on a tenant's subscription, launchable from the UI's launchpad and the CLI."""

from typing import TYPE_CHECKING, Any

import dagster as dg

from billing_pipelines.defs.resources import (
    STRIPE_POOL,
    BillingDatabase,
    StripeResource,
    UsageWarehouse,
)
from billing_pipelines.lib.catalog.plans import Catalog, load_catalog
from billing_pipelines.lib.lifecycle import actions as lifecycle
from billing_pipelines.lib.lifecycle.tax_location import update_address
from billing_pipelines.lib.metering.cut_push import CutPush
from billing_pipelines.lib.tax.location import tax_location
from billing_pipelines.lib.usage.periods import interval_queries

if TYPE_CHECKING:
    from billing_pipelines.lib.stripe.client import StripeClient

LOCATION_FIELDS = ("country", "postal_code", "state", "city", "line1", "tax_ids")


def _report(context: dg.OpExecutionContext, result: lifecycle.LifecycleResult) -> dict[str, Any]:
    context.add_output_metadata(
        {
            "tenant_id": result.tenant_id,
            "subscription_id": result.subscription_id or "",
            "subscription_status": result.subscription_status or "",
            "api_access_enabled": result.api_access_enabled,
            "detail": result.detail,
        }
    )
    context.log.info("%s: %s", result.tenant_id, result.detail)
    return dict(result.__dict__)


def _usage_reporter(
    context: dg.OpExecutionContext,
    billing_db: BillingDatabase,
    warehouse: UsageWarehouse,
    client: "StripeClient",
    catalog: Catalog,
) -> CutPush:
    """Pushes a tenant's usage up to a plan change or cancellation, before it is made."""
    return CutPush(
        transaction=billing_db.transaction,
        client=client,
        meters=[(m.metric, m.event_name, m.usage_column) for m in catalog.meters.values()],
        count=lambda tenant, start, end: interval_queries(warehouse.client(), tenant, start, end),
        run_id=context.run.run_id,
        log=context.log,
    )


class OnboardTenantConfig(dg.Config):
    """A new tenant: plan, contact, optional card (a trial needs none)."""

    tenant_id: str
    name: str
    email: str
    plan: str
    payment_method: str | None = None
    trial: bool = True
    trial_end_behavior: str = lifecycle.DEFAULT_TRIAL_END_BEHAVIOR
    # monthly, or annual (a yearly base fee; usage still billed monthly).
    billing_cycle: str = "monthly"
    # Billing address and tax ids (TYPE:VALUE), what Stripe Tax locates the customer by:
    # required when plans.toml turns automatic tax on.
    country: str | None = None
    postal_code: str | None = None
    state: str | None = None
    city: str | None = None
    line1: str | None = None
    tax_ids: list[str] = []


@dg.op(pool=STRIPE_POOL)
def onboard_tenant_op(
    context: dg.OpExecutionContext,
    config: OnboardTenantConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dict[str, Any]:
    """Create the tenant's Stripe customer and subscription (idempotent)."""
    fields = config.model_dump()
    location = tax_location(**{key: fields.pop(key) for key in LOCATION_FIELDS})
    request = lifecycle.OnboardRequest(**fields, tax_location=location)
    # Each step commits as soon as Stripe holds it: a crash leaves nothing unlinked.
    result = lifecycle.onboard_durably(
        billing_db.transaction, stripe.client(), load_catalog(), request
    )
    return _report(context, result)


@dg.job(description="Onboard a tenant: Stripe customer, card, subscription with trial.")
def onboard_tenant() -> None:
    onboard_tenant_op()


class ChangePlanConfig(dg.Config):
    """Move a tenant to another plan; `apply: false` only previews the prorated invoice."""

    tenant_id: str
    to_plan: str
    apply: bool = False
    proration_date: int | None = None
    # monthly or annual; None keeps the tenant's current billing cycle.
    billing_cycle: str | None = None


@dg.op(pool=STRIPE_POOL)
def change_plan_op(
    context: dg.OpExecutionContext,
    config: ChangePlanConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
    warehouse: UsageWarehouse,
) -> dict[str, Any]:
    """Preview the plan change's invoice, then apply it with the same proration date (the
    tenant's usage up to the change is pushed first, for the old plan)."""
    client, catalog = stripe.client(), load_catalog()
    with billing_db.transaction() as conn:
        preview = lifecycle.preview_plan_change(
            conn,
            client,
            catalog,
            config.tenant_id,
            config.to_plan,
            config.proration_date,
            config.billing_cycle,
        )
    context.log.info("preview: %s", preview.describe())
    out: dict[str, Any] = {"preview": preview.describe(), "amount_due": preview.amount_due}
    context.add_output_metadata(
        {
            "preview": preview.describe(),
            "amount_due_cents": preview.amount_due,
            "tax_cents": preview.tax,
        }
    )
    if config.apply:
        with billing_db.transaction() as conn:
            result = lifecycle.change_plan(
                conn,
                client,
                catalog,
                config.tenant_id,
                config.to_plan,
                preview.proration_date,
                preview=preview,
                usage=_usage_reporter(context, billing_db, warehouse, client, catalog),
                billing_cycle=config.billing_cycle,
            )
        out.update(_report(context, result))
    return out


@dg.job(description="Change a tenant's plan: preview with proration, then apply (dry-run default).")
def change_plan() -> None:
    change_plan_op()


class CancelSubscriptionConfig(dg.Config):
    """Cancel at period end (default) or immediately."""

    tenant_id: str
    immediately: bool = False


@dg.op(pool=STRIPE_POOL)
def cancel_subscription_op(
    context: dg.OpExecutionContext,
    config: CancelSubscriptionConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
    warehouse: UsageWarehouse,
) -> dict[str, Any]:
    """Cancel the tenant's subscription; access follows Stripe's resulting status (cancelling
    now first pushes the tenant's usage up to now, for the final invoice)."""
    client, catalog = stripe.client(), load_catalog()
    with billing_db.transaction() as conn:
        result = lifecycle.cancel(
            conn,
            client,
            catalog,
            config.tenant_id,
            immediately=config.immediately,
            usage=_usage_reporter(context, billing_db, warehouse, client, catalog),
        )
    return _report(context, result)


@dg.job(description="Cancel a tenant's subscription (at period end by default).")
def cancel_subscription() -> None:
    cancel_subscription_op()


class UpdatePaymentMethodConfig(dg.Config):
    """A new default card, and whether to retry open invoices with it now."""

    tenant_id: str
    payment_method: str
    retry_open_invoices: bool = True


@dg.op(pool=STRIPE_POOL)
def update_payment_method_op(
    context: dg.OpExecutionContext,
    config: UpdatePaymentMethodConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dict[str, Any]:
    """Make the card the default and retry what is unpaid."""
    with billing_db.transaction() as conn:
        result = lifecycle.update_payment_method(
            conn,
            stripe.client(),
            load_catalog(),
            config.tenant_id,
            config.payment_method,
            retry_open_invoices=config.retry_open_invoices,
        )
    return _report(context, result)


@dg.job(description="Update a tenant's card and retry its open invoices.")
def update_payment_method() -> None:
    update_payment_method_op()


class ReactivateConfig(dg.Config):
    """The tenant to bring back."""

    tenant_id: str


@dg.op(pool=STRIPE_POOL)
def reactivate_op(
    context: dg.OpExecutionContext,
    config: ReactivateConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dict[str, Any]:
    """Withdraw a pending cancellation, resume a pause, or subscribe again."""
    with billing_db.transaction() as conn:
        result = lifecycle.reactivate(conn, stripe.client(), load_catalog(), config.tenant_id)
    return _report(context, result)


@dg.job(description="Reactivate a tenant: undo a cancellation, resume, or subscribe again.")
def reactivate_tenant() -> None:
    reactivate_op()


class UpdateAddressConfig(dg.Config):
    """A tenant's new billing address (what Stripe Tax locates it by) and tax ids to add."""

    tenant_id: str
    country: str
    postal_code: str | None = None
    state: str | None = None
    city: str | None = None
    line1: str | None = None
    tax_ids: list[str] = []


@dg.op(pool=STRIPE_POOL)
def update_address_op(
    context: dg.OpExecutionContext,
    config: UpdateAddressConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dict[str, Any]:
    """Validate the address for Stripe Tax, then set it on the tenant's Stripe customer."""
    fields = config.model_dump()
    location = tax_location(**{key: fields[key] for key in LOCATION_FIELDS})
    with billing_db.transaction() as conn:
        result = update_address(conn, stripe.client(), config.tenant_id, location)
    return _report(context, result)


@dg.job(description="Update a tenant's billing address and tax ids (for automatic tax).")
def update_tenant_address() -> None:
    update_address_op()
