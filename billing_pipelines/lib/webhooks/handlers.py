"""What each Stripe event means for a tenant, decided on Stripe's current state.

Every handler follows one pattern: lock the tenant row (serialising all decisions about one
tenant), re-read the Stripe object the event is about, and converge the database to it. The
event's own snapshot and its arrival order are never trusted, so duplicates, replays and
out-of-order deliveries converge to the same result. Handlers run inside the transaction that
also marks the queue row done: the effect and the "done" mark commit together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.alerts import store as alerts
from billing_pipelines.lib.catalog.plans import Catalog
from billing_pipelines.lib.dunning.ladder import DEFAULT_LADDER, DunningLadder
from billing_pipelines.lib.lifecycle import plan_change
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.stripe import reads as stripe_state
from billing_pipelines.lib.tenants import access as tenant_state
from billing_pipelines.lib.tenants.access import Tenant, TenantState

if TYPE_CHECKING:
    import psycopg

    from billing_pipelines.lib.stripe.client import StripeClient
    from billing_pipelines.lib.webhooks.batch_reads import BatchReads


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may use: one transaction, one Stripe client, and the policy data."""

    conn: psycopg.Connection[Any]
    client: StripeClient
    catalog: Catalog
    actor: str
    alert_email: str | None = None
    ladder: DunningLadder = DEFAULT_LADDER
    # The Stripe key's mode (True: sk_live_/rk_live_); an event of the other mode is not
    # applied. None only where no event is handled (a dunning step re-reads its own invoice).
    livemode: bool | None = None
    # A webhook run's reads, shared by its events (see `batch_reads`); None reads every time.
    reads: BatchReads | None = None

    def subscription(self, subscription_id: str) -> stripe_state.SubscriptionView:
        """The subscription as Stripe has it now (once per webhook run)."""
        plans = set(self.catalog.plans)
        if self.reads is not None:
            return self.reads.subscription(self.client, subscription_id, known_plans=plans)
        return stripe_state.fetch_subscription(self.client, subscription_id, known_plans=plans)

    def invoice(self, invoice_id: str) -> stripe_state.InvoiceView:
        """The invoice as Stripe has it now (once per webhook run)."""
        if self.reads is not None:
            return self.reads.invoice(self.client, invoice_id)
        return stripe_state.fetch_invoice(self.client, invoice_id)


@dataclass(frozen=True)
class Outcome:
    """A handler's decision: `processed` (something was decided) or `ignored`, and why."""

    status: str
    detail: str


Handler = Callable[[HandlerContext, dict[str, Any]], Outcome]


def _object_id(event: dict[str, Any]) -> str:
    obj = (event.get("data") or {}).get("object") or {}
    oid = obj.get("id")
    if not isinstance(oid, str):
        raise ValueError(f"event {event.get('id')} carries no object id")
    return oid


def _customer_of(event: dict[str, Any]) -> str | None:
    obj = (event.get("data") or {}).get("object") or {}
    customer = obj.get("customer")
    return customer if isinstance(customer, str) else None


def explain_usage(
    ctx: HandlerContext, tenant: Tenant, invoice: stripe_state.InvoiceView
) -> str | None:
    """The plain-words usage sentence for this invoice, when it bills metered usage.

    Each metered line is explained by its own price's plan: after a plan change one invoice
    bills the old plan's part and the new plan's part, each with its own included queries.
    """
    plan = ctx.catalog.plans.get(tenant.state.plan)
    return plan_change.explain_invoice_usage(ctx.catalog, plan, invoice.lines, invoice.currency)


# ---- shared convergence step -------------------------------------------------------------------


def converge_tenant(
    ctx: HandlerContext,
    tenant: Tenant,
    *,
    reason: str,
    subscription: stripe_state.SubscriptionView | None = None,
    subscription_id: str | None = None,
    reactivation_invoice: stripe_state.InvoiceView | None = None,
) -> tuple[TenantState, TenantState] | None:
    """Recompute the tenant from Stripe's subscription and the ladder; write, audit, notify."""
    state = tenant.state
    sub_id = state.stripe_subscription_id or subscription_id
    if subscription is None and sub_id:
        subscription = ctx.subscription(sub_id)
    if subscription is not None:
        state = replace(
            state,
            stripe_subscription_id=subscription.id,
            plan=subscription.plan or state.plan,
            trial_end=subscription.trial_end,
        )
    level, failures = tenant_state.dunning_position(ctx.conn, tenant.tenant_id)
    target = tenant_state.decide(
        state,
        subscription_status=subscription.status if subscription else state.subscription_status,
        dunning_level=level,
        payment_failures=failures,
        ladder=ctx.ladder,
    )
    why = (
        f"{reason}; Stripe subscription {target.subscription_status or 'none'}, "
        f"dunning step {level}, {failures} failed attempt(s)"
    )
    change = tenant_state.apply(ctx.conn, tenant, target, actor=ctx.actor, reason=why)
    if (
        change is not None
        and reactivation_invoice is not None
        and change[0].restricted
        and not change[1].restricted
    ):
        notifications.enqueue(
            ctx.conn,
            dedup_key=f"reactivated:{reactivation_invoice.id}",
            tenant_id=tenant.tenant_id,
            template="reactivated",
            recipient=tenant.email,
            context={
                "tenant_name": tenant.name,
                "invoice_number": reactivation_invoice.number or reactivation_invoice.id,
                "invoice_url": reactivation_invoice.hosted_invoice_url,
                "amount_paid": notifications.format_money(
                    reactivation_invoice.amount_due, reactivation_invoice.currency
                ),
            },
        )
    return change


# ---- invoices ----------------------------------------------------------------------------------


def sync_invoice(ctx: HandlerContext, event: dict[str, Any]) -> Outcome:
    """invoice.paid / payment_succeeded / payment_failed / voided / marked_uncollectible."""
    customer = _customer_of(event)
    tenant = tenant_state.lock_by_customer(ctx.conn, customer) if customer else None
    if tenant is None:
        return Outcome("ignored", f"no tenant for customer {customer}")
    invoice = ctx.invoice(_object_id(event))
    return apply_invoice_state(ctx, tenant, invoice, event_created=event.get("created"))


def apply_invoice_state(
    ctx: HandlerContext,
    tenant: Tenant,
    invoice: stripe_state.InvoiceView,
    *,
    event_created: int | None = None,
) -> Outcome:
    """Open, update or resolve the invoice's dunning case from its current state."""
    conn = ctx.conn
    case = conn.execute(
        "SELECT status, attempt_count FROM dunning_cases WHERE invoice_id = %s FOR UPDATE",
        (invoice.id,),
    ).fetchone()
    if invoice.settled:
        detail = f"invoice {invoice.id} is {invoice.status}"
        if case is not None and case["status"] == "open":
            conn.execute(
                """
                UPDATE dunning_cases SET status = 'resolved', resolution = %s, resolved_at = now(),
                    updated_at = now()
                WHERE invoice_id = %s
                """,
                (invoice.status, invoice.id),
            )
            tenant_state.audit(
                conn,
                actor=ctx.actor,
                action="dunning.resolve",
                entity_type="invoice",
                entity_id=invoice.id,
                reason=f"Stripe reports the invoice {invoice.status}",
                before={"status": "open", "attempt_count": case["attempt_count"]},
                after={"status": "resolved", "resolution": invoice.status},
            )
            detail += ": dunning resolved"
        change = converge_tenant(
            ctx,
            tenant,
            reason=f"invoice {invoice.id} is {invoice.status} in Stripe",
            subscription_id=invoice.subscription,
            reactivation_invoice=invoice if invoice.status == "paid" else None,
        )
        return Outcome("processed", detail + (": tenant updated" if change else ""))
    if invoice.status in ("open", "uncollectible") and invoice.attempt_count > 0:
        first_failed = (
            datetime.fromtimestamp(event_created, UTC) if event_created else datetime.now(UTC)
        )
        conn.execute(
            """
            INSERT INTO dunning_cases (invoice_id, tenant_id, attempt_count, amount_due, currency,
                                       first_failed_at, next_payment_attempt)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (invoice_id) DO UPDATE
            SET attempt_count = GREATEST(dunning_cases.attempt_count, EXCLUDED.attempt_count),
                amount_due = EXCLUDED.amount_due,
                next_payment_attempt = EXCLUDED.next_payment_attempt,
                first_failed_at = LEAST(dunning_cases.first_failed_at, EXCLUDED.first_failed_at),
                updated_at = now()
            WHERE dunning_cases.status = 'open'
            """,
            (
                invoice.id,
                tenant.tenant_id,
                invoice.attempt_count,
                invoice.amount_remaining or invoice.amount_due,
                invoice.currency,
                first_failed,
                invoice.next_payment_attempt,
            ),
        )
        if case is None:
            tenant_state.audit(
                conn,
                actor=ctx.actor,
                action="dunning.open",
                entity_type="invoice",
                entity_id=invoice.id,
                reason=f"payment failed {invoice.attempt_count} time(s)",
                before=None,
                after={"status": "open", "attempt_count": invoice.attempt_count},
            )
        converge_tenant(
            ctx,
            tenant,
            reason=f"invoice {invoice.id} payment failed",
            subscription_id=invoice.subscription,
        )
        return Outcome(
            "processed",
            f"invoice {invoice.id} open after {invoice.attempt_count} failed attempt(s): "
            "handed to dunning",
        )
    return Outcome("ignored", f"invoice {invoice.id} is {invoice.status}, nothing to do")


def finalization_failed(ctx: HandlerContext, event: dict[str, Any]) -> Outcome:
    """invoice.finalization_failed: the invoice is stuck in draft; an operator must act."""
    invoice = ctx.invoice(_object_id(event))
    if invoice.status != "draft":
        return Outcome("ignored", f"invoice {invoice.id} is {invoice.status} now")
    customer = invoice.customer
    row = ctx.conn.execute(
        "SELECT tenant_id FROM tenants WHERE stripe_customer_id = %s", (customer,)
    ).fetchone()
    alerts.raise_alert(
        ctx.conn,
        dedup_key=f"invoice_finalization_failed:{invoice.id}",
        kind="invoice_finalization_failed",
        severity="critical",
        summary=f"Invoice {invoice.id} failed to finalize and is stuck in draft",
        details={
            "invoice": invoice.id,
            "customer": customer,
            "tenant": row["tenant_id"] if row else None,
            "error": invoice.last_finalization_error or "not given",
        },
        notify=ctx.alert_email,
    )
    return Outcome("processed", f"alert raised for invoice {invoice.id}")


# ---- subscriptions -----------------------------------------------------------------------------


def sync_subscription(ctx: HandlerContext, event: dict[str, Any]) -> Outcome:
    """customer.subscription.created / updated / deleted / paused / resumed."""
    customer = _customer_of(event)
    tenant = tenant_state.lock_by_customer(ctx.conn, customer) if customer else None
    if tenant is None:
        return Outcome("ignored", f"no tenant for customer {customer}")
    subscription = ctx.subscription(_object_id(event))
    known = tenant.state.stripe_subscription_id
    if known and known != subscription.id and subscription.status == "canceled":
        # An old subscription ending does not touch the tenant's current one.
        return Outcome("ignored", f"subscription {subscription.id} is not the tenant's current")
    change = converge_tenant(
        ctx,
        tenant,
        subscription=subscription,
        reason=f"Stripe subscription {subscription.id} is {subscription.status}",
    )
    after = change[1].billing_status if change else tenant.state.billing_status
    return Outcome(
        "processed",
        f"subscription {subscription.id} {subscription.status}: tenant {after}"
        + ("" if change else " (unchanged)"),
    )


def trial_will_end(ctx: HandlerContext, event: dict[str, Any]) -> Outcome:
    """customer.subscription.trial_will_end: remind if no payment method is on file."""
    customer = _customer_of(event)
    tenant = tenant_state.lock_by_customer(ctx.conn, customer) if customer else None
    if tenant is None:
        return Outcome("ignored", f"no tenant for customer {customer}")
    subscription = ctx.subscription(_object_id(event))
    converge_tenant(ctx, tenant, subscription=subscription, reason="trial ending soon")
    sent = remind_trial_ending(ctx, tenant, subscription)
    return Outcome("processed" if sent else "ignored", sent or "no reminder needed")


def remind_trial_ending(
    ctx: HandlerContext, tenant: Tenant, subscription: stripe_state.SubscriptionView
) -> str | None:
    """Queue the one trial-ending reminder, if trialing without a payment method."""
    if subscription.status != "trialing" or subscription.has_payment_method:
        return None
    if subscription.trial_end is None:
        return None
    plan = ctx.catalog.plans.get(subscription.plan or tenant.state.plan)
    if plan is None:
        return None
    currency = ctx.catalog.currency
    queued = notifications.enqueue(
        ctx.conn,
        dedup_key=f"trial_ending:{subscription.id}:{int(subscription.trial_end.timestamp())}",
        tenant_id=tenant.tenant_id,
        template="trial_ending",
        recipient=tenant.email,
        context={
            "tenant_name": tenant.name,
            "plan_name": plan.name,
            "trial_end": notifications.format_day(subscription.trial_end),
            "plan_price": notifications.format_money(
                plan.base_cents(subscription.billing_cycle), currency
            ),
            "price_period": "year" if subscription.billing_cycle == "annual" else "month",
            "included_queries": f"{plan.included_queries:,}",
            "overage_price": notifications.format_money(plan.overage_cents_per_query, currency)
            if plan.overage_cents_per_query >= 1
            else f"{plan.overage_cents_per_query}¢",
            "invoice_url": None,
        },
    )
    return f"trial reminder queued for {subscription.id}" if queued else "reminder already queued"


HANDLERS: dict[str, Handler] = {
    "invoice.paid": sync_invoice,
    "invoice.payment_succeeded": sync_invoice,
    "invoice.payment_failed": sync_invoice,
    "invoice.voided": sync_invoice,
    "invoice.marked_uncollectible": sync_invoice,
    "invoice.finalization_failed": finalization_failed,
    "customer.subscription.created": sync_subscription,
    "customer.subscription.updated": sync_subscription,
    "customer.subscription.deleted": sync_subscription,
    "customer.subscription.paused": sync_subscription,
    "customer.subscription.resumed": sync_subscription,
    "customer.subscription.trial_will_end": trial_will_end,
}


def _mode(live: bool) -> str:
    return "live" if live else "test"


def refuse_other_mode(ctx: HandlerContext, event: dict[str, Any]) -> Outcome | None:
    """A test-mode event never changes a live tenant, nor the reverse: record it and alert."""
    if ctx.livemode is None:
        return None
    event_live = event.get("livemode") is True
    if event_live == ctx.livemode:
        return None
    detail = (
        f"{_mode(event_live)}-mode event, but the Stripe key is {_mode(ctx.livemode)}-mode: "
        "not applied"
    )
    # One alert per direction and UTC day (a misrouted endpoint sends many); every event keeps
    # its own `ignored` row with this reason.
    alerts.raise_alert(
        ctx.conn,
        dedup_key=f"webhook_mode_mismatch:{_mode(event_live)}:{datetime.now(UTC).date()}",
        kind="webhook_mode_mismatch",
        severity="warning",
        summary=f"Stripe sent {_mode(event_live)}-mode events to the {_mode(ctx.livemode)}-mode "
        "receiver: check the webhook endpoint and STRIPE_WEBHOOK_SECRETS",
        details={"first_event": event.get("id"), "type": event.get("type")},
        notify=ctx.alert_email,
    )
    return Outcome("ignored", detail)


def handle(ctx: HandlerContext, event: dict[str, Any]) -> Outcome:
    """Dispatch by type; unknown types and events of the other Stripe mode are ignored."""
    refused = refuse_other_mode(ctx, event)
    if refused is not None:
        return refused
    handler = HANDLERS.get(str(event.get("type")))
    if handler is None:
        return Outcome("ignored", f"no handler for {event.get('type')}")
    return handler(ctx, event)
