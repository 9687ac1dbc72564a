"""Move a tenant to a new billing address (and add tax ids): what Stripe Tax locates it by."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.lifecycle.actions import LifecycleError, LifecycleResult, _result
from billing_pipelines.lib.stripe import tax as stripe_tax
from billing_pipelines.lib.tax.location import TaxLocation, TaxLocationError, check_tax_location
from billing_pipelines.lib.tenants import access as tenant_state

if TYPE_CHECKING:  # the definitions import this module; the drivers load when it runs
    import psycopg

    from billing_pipelines.lib.stripe.client import StripeClient


def update_address(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    tenant_id: str,
    location: TaxLocation,
    *,
    actor: str = "lifecycle.update_address",
) -> LifecycleResult:
    """Give Stripe the tenant's new address (validated first here, then by Stripe), audited.

    The address is checked as automatic tax needs it whether or not the catalog turns tax on:
    an address that could not be taxed would fail the tenant's invoices the day tax is on.
    Nothing changes when either check refuses it.
    """
    check_tax_location(tenant_id, location)
    tenant = tenant_state.lock_by_id(conn, tenant_id)
    if tenant is None:
        raise LifecycleError(f"unknown tenant {tenant_id!r}: onboard it first")
    if not tenant.stripe_customer_id:
        raise LifecycleError(f"tenant {tenant_id} has no Stripe customer: onboard it first")
    before = stripe_tax.customer_location(client, tenant.stripe_customer_id)
    try:
        added = stripe_tax.update_customer_tax(
            client,
            tenant.stripe_customer_id,
            stripe_tax.CustomerTax(
                address=location.address_params(),
                tax_id_data=tuple(location.tax_id_data()),
                validate=True,
            ),
        )
    except stripe_tax.TaxLocationRefused as exc:
        raise TaxLocationError(
            f"tenant {tenant_id}: Stripe Tax cannot locate this address ({exc}); "
            "the customer is unchanged"
        ) from None
    after = stripe_tax.customer_location(client, tenant.stripe_customer_id)
    tenant_state.audit(
        conn,
        actor=actor,
        action="tenant.update_address",
        entity_type="tenant",
        entity_id=tenant_id,
        reason="billing address for automatic tax",
        before=before,
        after=after,
    )
    detail = f"billing address {location.describe()}"
    if added:
        detail += f"; {len(added)} tax id(s) added"
    return _result(tenant, detail, address=after["address"], tax_ids=after["tax_ids"])
