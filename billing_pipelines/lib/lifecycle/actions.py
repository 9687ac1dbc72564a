"""Subscription lifecycle actions: onboard, change plan, cancel, update card, reactivate, portal.

Each action makes its Stripe calls through `stripe.lifecycle` (idempotency keys derived from
business ids: a retried action never creates a second customer or subscription), then lets
tenant access follow Stripe's resulting state through the same audited convergence step the
webhook handlers use (`webhook_handlers.converge_tenant`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.catalog.plans import ANNUAL, MONTHLY, Catalog, Plan, check_billing_cycle
from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.lifecycle import plan_change, usage_cut
from billing_pipelines.lib.metering import cuts
from billing_pipelines.lib.metering.cut_push import CutPush, CutPushResult
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.notifications.recipients import check_recipient
from billing_pipelines.lib.stripe import catalog as stripe_catalog
from billing_pipelines.lib.stripe import lifecycle as stripe_lifecycle
from billing_pipelines.lib.stripe import tax as stripe_tax
from billing_pipelines.lib.stripe.lifecycle import ItemPrice
from billing_pipelines.lib.tax.location import (
    TaxLocation,
    TaxLocationError,
    check_tax_location,
)
from billing_pipelines.lib.tenants import access as tenant_state
from billing_pipelines.lib.tenants.ids import check_tenant_id
from billing_pipelines.lib.webhooks.handlers import HandlerContext, converge_tenant

if TYPE_CHECKING:
    import psycopg

    from billing_pipelines.lib.stripe.client import StripeClient

# What Stripe does when a trial ends without a payment method. Pausing keeps the subscription
# (the tenant adds a card and resumes) while access stops: nobody uses the service for free.
DEFAULT_TRIAL_END_BEHAVIOR = "pause"
TRIAL_END_BEHAVIORS = ("pause", "cancel", "create_invoice")
# Opens one transaction on the billing database (committed on success), e.g. BillingDatabase's.
Transaction: TypeAlias = "Callable[[], AbstractContextManager[psycopg.Connection[Any]]]"


class LifecycleError(Exception):
    """A lifecycle action cannot proceed; the message says why in business terms."""


@dataclass(frozen=True)
class OnboardRequest:
    """Who to onboard, on which plan, with which card (None: trial without a card)."""

    tenant_id: str
    name: str
    email: str
    plan: str
    payment_method: str | None = None
    trial: bool = True
    trial_end_behavior: str = DEFAULT_TRIAL_END_BEHAVIOR
    test_clock: str | None = None
    # monthly, or annual: the base fee billed yearly (the plan must declare base_yearly_cents);
    # usage is measured and billed monthly in both.
    billing_cycle: str = MONTHLY
    # Where Stripe Tax locates the customer; required when the catalog turns automatic tax on,
    # unless the tenant's existing Stripe customer already carries it (subscribing again).
    tax_location: TaxLocation | None = None
    location_on_customer: bool = False


@dataclass(frozen=True)
class LifecycleResult:
    """What an action left behind, for run metadata and the CLI."""

    tenant_id: str
    customer_id: str | None
    subscription_id: str | None
    subscription_status: str | None
    api_access_enabled: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanChangePreview:
    """The invoice Stripe would issue for a plan change at a given proration date."""

    tenant_id: str
    from_plan: str
    to_plan: str
    proration_date: int
    proration_behavior: str
    amount_due: int
    currency: str
    lines: list[tuple[str, int]]
    # How included queries behave across the change, in the words the email and docs use.
    included_queries: str = ""
    from_cycle: str = MONTHLY
    to_cycle: str = MONTHLY
    # The previewed invoice before tax, its tax and its total (automatic tax on or off).
    subtotal: int | None = None
    tax: int = 0
    total: int | None = None
    automatic_tax: bool = False

    @property
    def tax_note(self) -> str:
        """The previewed invoice's tax in the words every amount-due email uses ("" untaxed)."""
        return notifications.tax_sentence(
            self.subtotal, self.tax, self.total, self.currency, taxed=self.automatic_tax
        )

    @property
    def due_when(self) -> str:
        """When the previewed amount is charged."""
        return "now" if self.proration_behavior == "always_invoice" else "on the next invoice"

    def describe(self) -> str:
        """Plain-words summary for the operator."""
        due = f"{self.amount_due / 100:,.2f} {self.currency.upper()}"
        lines = "; ".join(f"{text}: {amount / 100:,.2f}" for text, amount in self.lines)
        before, after = self.from_plan, self.to_plan
        if (self.from_cycle, self.to_cycle) != (MONTHLY, MONTHLY):
            before, after = f"{before} ({self.from_cycle})", f"{after} ({self.to_cycle})"
        summary = f"{before} -> {after}: {due} due {self.due_when} ({lines})"
        notes = [note for note in (self.tax_note, self.included_queries) if note]
        return " ".join([f"{summary}.", *notes]) if notes else summary


def _context(
    conn: psycopg.Connection[Any], client: StripeClient, catalog: Catalog, actor: str
) -> HandlerContext:
    return HandlerContext(conn=conn, client=client, catalog=catalog, actor=actor)


def _tenant(conn: psycopg.Connection[Any], tenant_id: str) -> tenant_state.Tenant:
    tenant = tenant_state.lock_by_id(conn, tenant_id)
    if tenant is None:
        raise LifecycleError(f"unknown tenant {tenant_id!r}: onboard it first")
    return tenant


def plan_price_ids(
    client: StripeClient, catalog: Catalog, plan: Plan, cycle: str = MONTHLY
) -> list[str]:
    """The live base (monthly or yearly, by billing cycle) and metered price ids of a plan."""
    keys = [stripe_catalog.base_lookup_key_for(plan, cycle)] + [
        stripe_catalog.usage_lookup_key(plan, meter) for meter in catalog.meters.values()
    ]
    by_key = stripe_lifecycle.active_price_ids(client, keys)
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise LifecycleError(
            f"plan {plan.key} has no live Stripe price for {', '.join(missing)}: "
            "materialize stripe_catalog first"
        )
    return [by_key[k] for k in keys]


def _result(tenant: tenant_state.Tenant | None, detail: str, **extra: Any) -> LifecycleResult:
    assert tenant is not None
    return LifecycleResult(
        tenant_id=tenant.tenant_id,
        customer_id=tenant.stripe_customer_id,
        subscription_id=tenant.state.stripe_subscription_id,
        subscription_status=tenant.state.subscription_status,
        api_access_enabled=tenant.state.api_access_enabled,
        detail=detail,
        extra=extra,
    )


def _converge(ctx: HandlerContext, tenant_id: str, reason: str) -> tenant_state.Tenant:
    converge_tenant(ctx, _tenant(ctx.conn, tenant_id), reason=reason)
    return _tenant(ctx.conn, tenant_id)


# ---- onboarding --------------------------------------------------------------------------------


def _get_or_create_customer(
    client: StripeClient,
    tenant: tenant_state.Tenant,
    request: OnboardRequest,
    *,
    tax_on: bool = False,
) -> str:
    if tenant.stripe_customer_id:
        return tenant.stripe_customer_id
    return stripe_lifecycle.find_or_create_customer(
        client,
        tenant_id=request.tenant_id,
        name=request.name,
        email=request.email,
        test_clock=request.test_clock,
        tax=_customer_tax(request.tax_location, validate=tax_on),
    )


def _customer_tax(location: TaxLocation | None, *, validate: bool) -> stripe_tax.CustomerTax | None:
    """The customer's address and tax ids for Stripe, validated by Stripe when tax is on."""
    if location is None or not location.given:
        return None
    return stripe_tax.CustomerTax(
        address=location.address_params(),
        tax_id_data=tuple(location.tax_id_data()),
        validate=validate,
    )


def _checked(request: OnboardRequest, catalog: Catalog) -> tuple[OnboardRequest, Plan]:
    """Every input validated before the first write or Stripe call (the email normalized)."""
    check_tenant_id(request.tenant_id)
    # One valid address, or one clear error before anything is stored or created in Stripe.
    request = replace(request, email=check_recipient(request.email))
    plan = catalog.plan(request.plan)
    check_billing_cycle(plan, request.billing_cycle)
    if catalog.automatic_tax and not request.location_on_customer:
        # Stripe Tax must be able to locate the customer: one line naming what is missing,
        # before anything is stored or created (Stripe validates it again at creation).
        check_tax_location(request.tenant_id, request.tax_location or TaxLocation())
    if request.trial_end_behavior not in TRIAL_END_BEHAVIORS:
        raise BillingConfigError(
            f"trial_end_behavior must be one of {', '.join(TRIAL_END_BEHAVIORS)}, "
            f"got {request.trial_end_behavior!r}"
        )
    return request, plan


def _record_tenant(
    conn: psycopg.Connection[Any], request: OnboardRequest, plan: Plan
) -> tenant_state.Tenant:
    _insert_tenant(conn, request, plan)
    return _tenant(conn, request.tenant_id)


def _insert_tenant(conn: psycopg.Connection[Any], request: OnboardRequest, plan: Plan) -> bool:
    """Insert the tenant row; True when this call created it (False: it existed)."""
    row = conn.execute(
        """
        INSERT INTO tenants (tenant_id, name, email, plan)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (tenant_id) DO NOTHING
        RETURNING tenant_id
        """,
        (request.tenant_id, request.name, request.email, plan.key),
    ).fetchone()
    return row is not None


def _forget_new_tenant(conn: psycopg.Connection[Any], tenant_id: str) -> None:
    """Remove a tenant row this onboarding inserted and Stripe refused: nothing is left behind."""
    conn.execute(
        "DELETE FROM tenants WHERE tenant_id = %s AND stripe_customer_id IS NULL "
        "AND stripe_subscription_id IS NULL",
        (tenant_id,),
    )


def _refused(tenant_id: str, exc: stripe_tax.TaxLocationRefused) -> TaxLocationError:
    return TaxLocationError(
        f"tenant {tenant_id}: Stripe Tax cannot locate this customer ({exc}); nothing was "
        "created: give a usable address (billing tenant update-address for an existing tenant)"
    )


def _link_customer(
    conn: psycopg.Connection[Any], tenant: tenant_state.Tenant, customer_id: str, actor: str
) -> None:
    if tenant.stripe_customer_id == customer_id:
        return
    conn.execute(
        "UPDATE tenants SET stripe_customer_id = %s, updated_at = now() WHERE tenant_id = %s",
        (customer_id, tenant.tenant_id),
    )
    tenant_state.audit(
        conn,
        actor=actor,
        action="tenant.link_customer",
        entity_type="tenant",
        entity_id=tenant.tenant_id,
        reason="onboarding: Stripe customer created or found by tenant_id metadata",
        before={"stripe_customer_id": tenant.stripe_customer_id},
        after={"stripe_customer_id": customer_id},
    )


def onboard_durably(
    transaction: Transaction,
    client: StripeClient,
    catalog: Catalog,
    request: OnboardRequest,
    *,
    actor: str = "lifecycle.onboard_tenant",
) -> LifecycleResult:
    """Onboard, committing the tenant row, then its customer, before the subscription exists.

    A crash at any point leaves what Stripe holds findable: the customer is linked to a
    committed tenant row (or found again by its `tenant_id` metadata), and the subscription is
    found by its `tenant_id` metadata before another is created. Re-running after a crash, even
    past Stripe's 24-hour idempotency window, ends with one customer and one subscription.
    """
    request, plan = _checked(request, catalog)
    with transaction() as conn:
        created = _insert_tenant(conn, request, plan)
        tenant = _tenant(conn, request.tenant_id)
    if not tenant.stripe_customer_id:
        try:
            customer_id = _get_or_create_customer(
                client, tenant, request, tax_on=catalog.automatic_tax
            )
        except stripe_tax.TaxLocationRefused as exc:
            # Stripe created nothing; neither does this onboarding (the row is new and bare).
            if created:
                with transaction() as conn:
                    _forget_new_tenant(conn, request.tenant_id)
            raise _refused(request.tenant_id, exc) from None
        with transaction() as conn:
            _link_customer(conn, _tenant(conn, request.tenant_id), customer_id, actor)
    with transaction() as conn:
        return onboard(conn, client, catalog, request, actor=actor)


def onboard(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    catalog: Catalog,
    request: OnboardRequest,
    *,
    actor: str = "lifecycle.onboard_tenant",
) -> LifecycleResult:
    """Create (or find) the tenant, its Stripe customer and its subscription, in one transaction.

    Idempotent, but a crash rolls back every write made here while Stripe keeps its objects:
    the re-run finds them by `tenant_id` metadata. `onboard_durably` commits as it goes.
    """
    request, plan = _checked(request, catalog)
    tenant = _record_tenant(conn, request, plan)
    try:
        customer_id = _get_or_create_customer(client, tenant, request, tax_on=catalog.automatic_tax)
    except stripe_tax.TaxLocationRefused as exc:
        raise _refused(request.tenant_id, exc) from None
    _link_customer(conn, tenant, customer_id, actor)
    if request.payment_method:
        stripe_lifecycle.attach_default_card(client, customer_id, request.payment_method)

    ctx = _context(conn, client, catalog, actor)
    current = tenant.state.stripe_subscription_id
    if current and not stripe_lifecycle.retrieve_subscription(client, current).ended:
        tenant = _converge(ctx, request.tenant_id, "onboarding: subscription already exists")
        return _result(tenant, "already onboarded")

    # A subscription Stripe made for this tenant that we never recorded (a crash after it was
    # created): link it instead of creating a second one.
    found = stripe_lifecycle.find_live_subscription(
        client, customer_id=customer_id, tenant_id=request.tenant_id
    )
    if found is not None and found != current:
        _link_subscription(conn, request.tenant_id, found, plan.key)
        tenant = _converge(
            ctx, request.tenant_id, "onboarding: linked the subscription found in Stripe"
        )
        return _result(tenant, f"linked existing subscription {found}")

    # A tenant that has had a trial does not get another one.
    trial = request.trial and not tenant.state.trial_end
    try:
        subscription_id = stripe_lifecycle.create_subscription(
            client,
            tenant_id=request.tenant_id,
            customer_id=customer_id,
            plan_key=plan.key,
            price_ids=plan_price_ids(client, catalog, plan, request.billing_cycle),
            predecessor=current,
            trial_days=catalog.trial_days if trial else None,
            trial_end_behavior=request.trial_end_behavior if trial else None,
            billing_cycle=request.billing_cycle,
            automatic_tax=catalog.automatic_tax,
        )
    except stripe_tax.TaxLocationRefused as exc:
        raise _refused(request.tenant_id, exc) from None
    _link_subscription(conn, request.tenant_id, subscription_id, plan.key)
    on = plan.key if request.billing_cycle == MONTHLY else f"{plan.key} ({request.billing_cycle})"
    tenant = _converge(ctx, request.tenant_id, f"onboarded on {on}")
    return _result(tenant, f"subscribed to {on}", billing_cycle=request.billing_cycle)


def _link_subscription(
    conn: psycopg.Connection[Any], tenant_id: str, subscription_id: str, plan_key: str
) -> None:
    conn.execute(
        "UPDATE tenants SET stripe_subscription_id = %s, plan = %s, updated_at = now() "
        "WHERE tenant_id = %s",
        (subscription_id, plan_key, tenant_id),
    )


# ---- plan changes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    """A plan change as decided: plans, billing cycles, item moves, proration behaviour."""

    current: Plan
    target: Plan
    changes: list[ItemPrice]
    behavior: str
    old_usage: list[str]
    from_cycle: str
    to_cycle: str
    # The metered price changes (another plan): a usage boundary at the change. A billing
    # cycle switch on the same plan moves only the base fee: usage is not cut there.
    usage_moves: bool = True


def _plan_change(
    client: StripeClient,
    catalog: Catalog,
    tenant: tenant_state.Tenant,
    to_plan: str,
    billing_cycle: str | None = None,
) -> _Change:
    if not tenant.state.stripe_subscription_id or not tenant.stripe_customer_id:
        raise LifecycleError(f"tenant {tenant.tenant_id} has no subscription to change")
    current, target = catalog.plan(tenant.state.plan), catalog.plan(to_plan)
    subscription = stripe_lifecycle.retrieve_subscription(
        client, tenant.state.stripe_subscription_id
    )
    # The tenant's cycle is what Stripe bills: a yearly base price is the annual cycle.
    from_cycle = subscription.billing_cycle
    to_cycle = check_billing_cycle(target, billing_cycle or from_cycle)
    if current.key == target.key and from_cycle == to_cycle:
        on = target.key if to_cycle == MONTHLY else f"{target.key} ({to_cycle})"
        raise LifecycleError(f"tenant {tenant.tenant_id} is already on {on}")
    if subscription.ended:
        raise LifecycleError(f"subscription {subscription.id} is {subscription.status}")
    if subscription.billing_mode != stripe_lifecycle.BILLING_MODE:
        # Classic mode would silently drop the usage before the change (never billed).
        raise LifecycleError(
            f"subscription {subscription.id} uses {subscription.billing_mode} billing mode, "
            f"which does not bill the usage before a price change: migrate it to "
            f"{stripe_lifecycle.BILLING_MODE} in Stripe before changing plans"
        )
    new_prices = plan_price_ids(client, catalog, target, to_cycle)
    items = subscription.items
    if len(items) != len(new_prices):
        raise LifecycleError(
            f"subscription {subscription.id} has {len(items)} items, plan {target.key} has "
            f"{len(new_prices)} prices: fix it in Stripe before changing plans"
        )
    # Items are created in catalog order (base, then meters): replace each price in place.
    ordered = sorted(items, key=lambda item: 0 if item.usage_type == "licensed" else 1)
    changes = [ItemPrice(item.id, price) for item, price in zip(ordered, new_prices, strict=True)]
    # Upgrades are charged now (the customer gets more immediately); downgrades credit the
    # unused part of the higher fee on the next invoice. Both take effect at the proration date.
    # A change of billing cycle moves the base fee to a price on another interval: its item
    # starts a new full period at the change, billed then with the credit for the unused old
    # period (Stripe invoices a new interval's first period at once), so it is charged now.
    behavior = (
        "always_invoice"
        if from_cycle != to_cycle or target.base_monthly_cents > current.base_monthly_cents
        else "create_prorations"
    )
    old_usage = [item.price_id for item in ordered if item.usage_type == "metered"]
    usage_moves = any(
        item.price_id != change.price_id
        for item, change in zip(ordered, changes, strict=True)
        if item.usage_type == "metered"
    )
    return _Change(current, target, changes, behavior, old_usage, from_cycle, to_cycle, usage_moves)


def preview_plan_change(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    catalog: Catalog,
    tenant_id: str,
    to_plan: str,
    proration_date: int | None = None,
    billing_cycle: str | None = None,
) -> PlanChangePreview:
    """What changing plans (or billing cycle) would cost, from Stripe's own invoice preview
    (nothing changes). `billing_cycle` None keeps the tenant's current cycle."""
    tenant = _tenant(conn, tenant_id)
    decided = _plan_change(client, catalog, tenant, to_plan, billing_cycle)
    current, target, changes = decided.current, decided.target, decided.changes
    behavior, old_usage = decided.behavior, decided.old_usage
    assert tenant.stripe_customer_id is not None
    assert tenant.state.stripe_subscription_id is not None
    when = proration_date or stripe_lifecycle.customer_now(client, tenant.stripe_customer_id)
    preview = stripe_lifecycle.preview_price_change(
        client,
        customer_id=tenant.stripe_customer_id,
        subscription_id=tenant.state.stripe_subscription_id,
        changes=changes,
        proration_date=when,
        proration_behavior=behavior,
    )
    # The old plan's usage so far, as Stripe priced it on its own line (flexible billing mode).
    before = next(
        (
            found
            for price in old_usage
            if (found := plan_change.usage_before_change(preview.detail, price)) is not None
        ),
        None,
    )
    return PlanChangePreview(
        tenant_id=tenant_id,
        from_plan=current.key,
        to_plan=target.key,
        proration_date=when,
        proration_behavior=behavior,
        amount_due=preview.amount_due,
        currency=preview.currency,
        lines=preview.lines,
        included_queries=plan_change.cycle_change_note(target, decided.to_cycle)
        if current.key == target.key
        else plan_change.included_queries_note(current, target, before, preview.currency),
        from_cycle=decided.from_cycle,
        to_cycle=decided.to_cycle,
        subtotal=preview.subtotal,
        tax=preview.tax,
        total=preview.total,
        automatic_tax=preview.automatic_tax,
    )


def _usage_before(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    usage: CutPush | None,
    tenant_id: str,
    customer_id: str,
    subscription_id: str,
) -> CutPushResult | None:
    """The tenant's usage up to now, pushed before the action (a refusal is one clear line)."""
    try:
        return usage_cut.before(
            conn,
            client,
            usage,
            tenant_id=tenant_id,
            customer_id=customer_id,
            subscription_id=subscription_id,
        )
    except usage_cut.UsageCutError as exc:
        raise LifecycleError(f"tenant {tenant_id}: {exc}") from exc


def change_plan(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    catalog: Catalog,
    tenant_id: str,
    to_plan: str,
    proration_date: int,
    *,
    preview: PlanChangePreview | None = None,
    usage: CutPush | None = None,
    actor: str = "lifecycle.change_plan",
    billing_cycle: str | None = None,
) -> LifecycleResult:
    """Apply a previewed plan change with the same proration date, so the bill matches it.

    With a `usage` reporter, the tenant's usage up to now is pushed first, so the old plan's
    part bills the queries before the change (see usage_cut). The tenant gets one email per
    change with the previewed amounts and the included-queries rule, worded as in the preview.
    """
    tenant = _tenant(conn, tenant_id)
    first = _plan_change(client, catalog, tenant, to_plan, billing_cycle)  # refuse before a push
    assert tenant.stripe_customer_id is not None
    assert tenant.state.stripe_subscription_id is not None
    pushed = (
        _usage_before(
            conn,
            client,
            usage,
            tenant_id,
            tenant.stripe_customer_id,
            tenant.state.stripe_subscription_id,
        )
        if first.usage_moves
        else None
    )
    stale = pushed is not None and pushed.sent > 0  # the old part's usage changed: re-preview
    if preview is None or preview.proration_date != proration_date or stale:
        preview = preview_plan_change(
            conn, client, catalog, tenant_id, to_plan, proration_date, billing_cycle
        )
    tenant = _tenant(conn, tenant_id)
    decided = _plan_change(client, catalog, tenant, to_plan, billing_cycle)
    current, target, changes, behavior = (
        decided.current,
        decided.target,
        decided.changes,
        decided.behavior,
    )
    assert tenant.state.stripe_subscription_id is not None
    assert tenant.stripe_customer_id is not None
    stripe_lifecycle.change_prices(
        client,
        tenant_id=tenant_id,
        subscription_id=tenant.state.stripe_subscription_id,
        plan_key=target.key,
        changes=changes,
        proration_date=proration_date,
        proration_behavior=behavior,
        billing_cycle=decided.to_cycle,
    )
    if decided.usage_moves:
        usage_cut.after(
            conn,
            client,
            tenant_id=tenant_id,
            customer_id=tenant.stripe_customer_id,
            subscription_id=tenant.state.stripe_subscription_id,
            action=cuts.PLAN_CHANGE,
        )
    notifications.enqueue(
        conn,
        dedup_key=f"plan_change:{tenant_id}:{target.key}:{decided.to_cycle}:{proration_date}",
        tenant_id=tenant_id,
        template="plan_changed",
        recipient=tenant.email,
        context={
            "tenant_name": tenant.name,
            "from_plan": _named(current, decided.from_cycle),
            "to_plan": _named(target, decided.to_cycle),
            "amount_due": notifications.format_money(preview.amount_due, preview.currency),
            "due_when": preview.due_when,
            "lines": [
                {"text": text, "amount": notifications.format_money(amount, preview.currency)}
                for text, amount in preview.lines
            ],
            "included_queries": preview.included_queries,
            "tax_note": preview.tax_note,
            "invoice_url": None,
        },
    )
    ctx = _context(conn, client, catalog, actor)
    on = target.key if decided.to_cycle == MONTHLY else f"{target.key} ({decided.to_cycle})"
    tenant = _converge(ctx, tenant_id, f"plan changed to {on}")
    return _result(tenant, f"now on {on} ({behavior}). {preview.included_queries}")


def _named(plan: Plan, cycle: str) -> str:
    """A plan's name as the tenant reads it, with the billing cycle when annual."""
    return f"{plan.name} (annual)" if cycle == ANNUAL else plan.name


# ---- cancellation, cards, reactivation, portal -------------------------------------------------


def cancel(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    catalog: Catalog,
    tenant_id: str,
    *,
    immediately: bool = False,
    usage: CutPush | None = None,
    actor: str = "lifecycle.cancel_subscription",
) -> LifecycleResult:
    """Cancel at period end (default: service until then) or now (access ends now).

    Cancelling now with a `usage` reporter first pushes the tenant's usage up to now, so the
    final invoice bills every query before the cancellation (see usage_cut).
    """
    tenant = _tenant(conn, tenant_id)
    sub_id = tenant.state.stripe_subscription_id
    if not sub_id:
        raise LifecycleError(f"tenant {tenant_id} has no subscription to cancel")
    if immediately:
        customer_id = tenant.stripe_customer_id or ""
        if not stripe_lifecycle.retrieve_subscription(client, sub_id).ended:
            _usage_before(conn, client, usage, tenant_id, customer_id, sub_id)
        stripe_lifecycle.cancel_now(client, sub_id)
        usage_cut.after(
            conn,
            client,
            tenant_id=tenant_id,
            customer_id=customer_id,
            subscription_id=sub_id,
            action=cuts.CANCEL_NOW,
        )
        detail = (
            "canceled now; a final invoice bills the period's usage so far "
            "minus the unused part of the base fee"
        )
    else:
        annual = stripe_lifecycle.retrieve_subscription(client, sub_id).billing_cycle == ANNUAL
        stripe_lifecycle.set_cancel_at_period_end(client, sub_id, True, annual=annual)
        detail = (
            "cancels at the end of the current period; the final invoice bills that period's usage"
            if not annual
            else "cancels at the end of the paid year; usage is billed monthly until then"
        )
    tenant = _converge(_context(conn, client, catalog, actor), tenant_id, detail)
    return _result(tenant, detail)


def update_payment_method(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    catalog: Catalog,
    tenant_id: str,
    payment_method: str,
    *,
    retry_open_invoices: bool = True,
    actor: str = "lifecycle.update_payment_method",
) -> LifecycleResult:
    """Make a new card the default and, by default, retry the tenant's unpaid invoices now."""
    from billing_pipelines.lib.stripe.client import CardError

    tenant = _tenant(conn, tenant_id)
    if not tenant.stripe_customer_id:
        raise LifecycleError(f"tenant {tenant_id} has no Stripe customer")
    card = stripe_lifecycle.attach_default_card(client, tenant.stripe_customer_id, payment_method)
    paid, failed = [], []
    if retry_open_invoices:
        for invoice_id in stripe_lifecycle.open_invoice_ids(client, tenant.stripe_customer_id):
            try:
                stripe_lifecycle.pay_invoice(client, invoice_id, card)
                paid.append(invoice_id)
            except CardError as exc:
                failed.append(f"{invoice_id}: {exc.user_message or exc.code}")
    tenant = _converge(_context(conn, client, catalog, actor), tenant_id, "payment method updated")
    detail = f"default card {card}; paid {len(paid)} open invoice(s)"
    if failed:
        detail += f"; still failing: {'; '.join(failed)}"
    return _result(tenant, detail, paid=paid, failed=failed)


def reactivate(
    conn: psycopg.Connection[Any],
    client: StripeClient,
    catalog: Catalog,
    tenant_id: str,
    *,
    actor: str = "lifecycle.reactivate",
) -> LifecycleResult:
    """Undo a pending cancellation, resume a paused subscription, or subscribe again."""
    tenant = _tenant(conn, tenant_id)
    sub_id = tenant.state.stripe_subscription_id
    ctx = _context(conn, client, catalog, actor)
    if sub_id:
        subscription = stripe_lifecycle.retrieve_subscription(client, sub_id)
        if not subscription.ended:
            if subscription.status == "paused":
                # The billing cycle restarts now (Stripe's default): no charge for the pause.
                # It resumes only once that first invoice is paid; a failed payment leaves it
                # paused (no access) and Stripe retries it, so the dunning ladder runs.
                stripe_lifecycle.resume(client, sub_id)
                after = stripe_lifecycle.retrieve_subscription(client, sub_id)
                detail = (
                    "resumed the paused subscription"
                    if after.status != "paused"
                    else "resume waits for payment: the first invoice failed and Stripe retries it"
                )
            elif subscription.cancel_at_period_end or subscription.cancel_at is not None:
                stripe_lifecycle.set_cancel_at_period_end(
                    client, sub_id, False, annual=subscription.billing_cycle == ANNUAL
                )
                detail = "pending cancellation withdrawn"
            else:
                detail = f"nothing to reactivate: subscription is {subscription.status}"
            return _result(_converge(ctx, tenant_id, detail), detail)
    request = OnboardRequest(
        tenant_id=tenant_id,
        name=tenant.name,
        email=tenant.email,
        plan=tenant.state.plan,
        trial=False,
        # The customer keeps its address: Stripe validates it when the subscription is made.
        location_on_customer=bool(tenant.stripe_customer_id),
    )
    result = onboard(conn, client, catalog, request, actor=actor)
    return LifecycleResult(**{**result.__dict__, "detail": f"subscribed again: {result.detail}"})


def portal_url(
    conn: psycopg.Connection[Any], client: StripeClient, tenant_id: str, return_url: str
) -> str:
    """A Stripe customer-portal link where the tenant updates cards and downloads invoices."""
    tenant = _tenant(conn, tenant_id)
    if not tenant.stripe_customer_id:
        raise LifecycleError(f"tenant {tenant_id} has no Stripe customer")
    return stripe_lifecycle.portal_session_url(client, tenant.stripe_customer_id, return_url)
