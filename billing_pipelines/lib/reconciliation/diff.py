"""The tenant database against a Stripe snapshot: what disagrees, by category, and what to fix.

Stripe is the source of truth for subscription state. A finding is a revenue leak when the
SaaS is serving a tenant that Stripe will not (or cannot) charge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib import markdown
from billing_pipelines.lib.stripe.objects import ENDED_STATUSES
from billing_pipelines.lib.stripe.snapshots import (
    CustomerSnapshot,
    InvoiceSnapshot,
    SubscriptionSnapshot,
)

if TYPE_CHECKING:
    import psycopg

CANCELED_ACTIVE = "canceled_in_stripe_active_locally"
PLAN_MISMATCH = "plan_mismatch"
STATUS_MISMATCH = "status_mismatch"
TENANT_WITHOUT_SUBSCRIPTION = "tenant_without_subscription"
CUSTOMER_WITHOUT_TENANT = "customer_without_tenant"
TRIAL_ENDED_NO_PAYMENT_METHOD = "trial_ended_without_payment_method"
INVOICE_STUCK_IN_DRAFT = "invoice_stuck_in_draft"
SUBSCRIPTION_INCOMPLETE = "subscription_incomplete"

CATEGORIES = (
    CANCELED_ACTIVE,
    PLAN_MISMATCH,
    STATUS_MISMATCH,
    TENANT_WITHOUT_SUBSCRIPTION,
    CUSTOMER_WITHOUT_TENANT,
    TRIAL_ENDED_NO_PAYMENT_METHOD,
    INVOICE_STUCK_IN_DRAFT,
    SUBSCRIPTION_INCOMPLETE,
)
# Categories where service is given without a charge (when the tenant still has access).
LEAK_CATEGORIES = frozenset(
    {
        CANCELED_ACTIVE,
        TRIAL_ENDED_NO_PAYMENT_METHOD,
        INVOICE_STUCK_IN_DRAFT,
        SUBSCRIPTION_INCOMPLETE,
    }
)
# Categories a remediation run fixes by applying Stripe's subscription to the tenant row.
REMEDIABLE = frozenset(
    {
        CANCELED_ACTIVE,
        PLAN_MISMATCH,
        STATUS_MISMATCH,
        TRIAL_ENDED_NO_PAYMENT_METHOD,
        SUBSCRIPTION_INCOMPLETE,
    }
)


@dataclass(frozen=True)
class TenantRow:
    """What the tenant database says about one tenant."""

    tenant_id: str
    plan: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    billing_status: str
    subscription_status: str | None
    api_access_enabled: bool

    def as_json(self) -> dict[str, Any]:
        """The local side of a finding."""
        return {
            "plan": self.plan,
            "billing_status": self.billing_status,
            "subscription_status": self.subscription_status,
            "api_access_enabled": self.api_access_enabled,
            "stripe_subscription_id": self.stripe_subscription_id,
        }


@dataclass(frozen=True)
class Finding:
    """One disagreement between the tenant database and Stripe."""

    category: str
    revenue_leak: bool
    detail: str
    tenant_id: str | None = None
    customer_id: str | None = None
    subscription_id: str | None = None
    local_state: Mapping[str, Any] | None = None
    stripe_state: Mapping[str, Any] | None = None


def _stripe_json(sub: SubscriptionSnapshot) -> dict[str, Any]:
    return {
        "status": sub.status,
        "plan": sub.plan,
        "has_payment_method": sub.has_payment_method,
        "trial_end": sub.trial_end.isoformat() if sub.trial_end else None,
        "cancel_at_period_end": sub.cancel_at_period_end,
        # A cancellation scheduled by `cancel_at` leaves `cancel_at_period_end` false.
        "cancel_at": sub.cancel_at.isoformat() if sub.cancel_at else None,
        "latest_invoice_status": sub.latest_invoice_status,
    }


def current_subscription(
    tenant: TenantRow,
    by_id: Mapping[str, SubscriptionSnapshot],
    by_customer: Mapping[str, Sequence[SubscriptionSnapshot]],
) -> SubscriptionSnapshot | None:
    """The subscription the tenant is billed on: its recorded one, else its customer's newest
    live one, else its customer's newest one."""
    if tenant.stripe_subscription_id and tenant.stripe_subscription_id in by_id:
        return by_id[tenant.stripe_subscription_id]
    candidates = list(by_customer.get(tenant.stripe_customer_id or "", ()))
    if not candidates:
        return None
    live = [s for s in candidates if s.status not in ENDED_STATUSES]
    pool = live or candidates
    return max(pool, key=lambda s: (s.created.timestamp() if s.created else 0.0, s.subscription_id))


@dataclass
class Diff:
    """All findings of one snapshot, and how many were compared."""

    findings: list[Finding] = field(default_factory=list)
    tenants: int = 0
    subscriptions: int = 0
    customers: int = 0

    def by_category(self) -> dict[str, list[Finding]]:
        """Findings grouped by category (every category present, maybe empty)."""
        out: dict[str, list[Finding]] = {c: [] for c in CATEGORIES}
        for finding in self.findings:
            out[finding.category].append(finding)
        return out

    def leaks(self, category: str) -> list[Finding]:
        """Revenue-leak findings of one category."""
        return [f for f in self.findings if f.category == category and f.revenue_leak]

    @property
    def mismatches(self) -> int:
        """Tenant-state findings (the health metric), excluding Stripe-only housekeeping."""
        return sum(1 for f in self.findings if f.category != CUSTOMER_WITHOUT_TENANT)


def diff(
    tenants: Iterable[TenantRow],
    subscriptions: Iterable[SubscriptionSnapshot],
    customers: Iterable[CustomerSnapshot],
    invoices: Iterable[InvoiceSnapshot],
    *,
    as_of: datetime,
) -> Diff:
    """Compare every tenant with Stripe's snapshot; `as_of` is when the snapshot was taken."""
    tenants = list(tenants)
    subscriptions = list(subscriptions)
    customers = list(customers)
    by_id = {s.subscription_id: s for s in subscriptions}
    by_customer: dict[str, list[SubscriptionSnapshot]] = defaultdict(list)
    for listed in subscriptions:
        by_customer[listed.customer_id].append(listed)
    tenant_by_customer = {t.stripe_customer_id: t for t in tenants if t.stripe_customer_id}
    out = Diff(tenants=len(tenants), subscriptions=len(subscriptions), customers=len(customers))

    def add(category: str, tenant: TenantRow | None, detail: str, **kw: Any) -> None:
        served = tenant is not None and tenant.api_access_enabled
        leak = category in LEAK_CATEGORIES and (served or category == INVOICE_STUCK_IN_DRAFT)
        out.findings.append(
            Finding(
                category=category,
                revenue_leak=leak,
                detail=detail,
                tenant_id=tenant.tenant_id if tenant else None,
                local_state=tenant.as_json() if tenant else None,
                **kw,
            )
        )

    for tenant in sorted(tenants, key=lambda t: t.tenant_id):
        sub = current_subscription(tenant, by_id, by_customer)
        if sub is None:
            if tenant.api_access_enabled:
                add(
                    TENANT_WITHOUT_SUBSCRIPTION,
                    tenant,
                    f"tenant {tenant.tenant_id} has API access but no subscription in Stripe"
                    + ("" if tenant.stripe_customer_id else " (and no Stripe customer)"),
                    customer_id=tenant.stripe_customer_id,
                    subscription_id=tenant.stripe_subscription_id,
                )
            continue
        ids = {
            "customer_id": sub.customer_id,
            "subscription_id": sub.subscription_id,
            "stripe_state": _stripe_json(sub),
        }
        if sub.status in ENDED_STATUSES and tenant.api_access_enabled:
            add(
                CANCELED_ACTIVE,
                tenant,
                f"Stripe subscription {sub.subscription_id} is {sub.status} but tenant "
                f"{tenant.tenant_id} still has API access ({tenant.billing_status})",
                **ids,
            )
        elif tenant.subscription_status != sub.status:
            add(
                STATUS_MISMATCH,
                tenant,
                f"Stripe says {sub.status}, the tenant database says "
                f"{tenant.subscription_status or 'nothing'} (billing status "
                f"{tenant.billing_status})",
                **ids,
            )
        if sub.status not in ENDED_STATUSES and sub.plan and sub.plan != tenant.plan:
            add(
                PLAN_MISMATCH,
                tenant,
                f"Stripe bills plan {sub.plan}, the tenant database says {tenant.plan}",
                **ids,
            )
        # A trial that ended without a card is a finding only while the tenant is still
        # served: paused in Stripe with access off is the intended outcome, not a problem
        # (a status the tenant row does not share is still reported as a status mismatch).
        if (
            sub.trial_end is not None
            and sub.status != "trialing"
            and sub.status not in ENDED_STATUSES
            and not sub.has_payment_method
            and tenant.api_access_enabled
        ):
            add(
                TRIAL_ENDED_NO_PAYMENT_METHOD,
                tenant,
                f"trial ended {sub.trial_end:%Y-%m-%d %H:%M} UTC without a payment method; "
                f"subscription is {sub.status}",
                **ids,
            )
        if sub.status == "incomplete":
            add(
                SUBSCRIPTION_INCOMPLETE,
                tenant,
                f"subscription {sub.subscription_id} never got its first payment "
                f"(latest invoice {sub.latest_invoice_status or 'unknown'})",
                **ids,
            )

    for customer in sorted(customers, key=lambda c: c.customer_id):
        if customer.customer_id not in tenant_by_customer:
            out.findings.append(
                Finding(
                    category=CUSTOMER_WITHOUT_TENANT,
                    revenue_leak=False,
                    detail=f"Stripe customer {customer.customer_id} "
                    f"({customer.email or 'no email'}) belongs to no tenant"
                    + (
                        f" (metadata names tenant {customer.metadata_tenant_id})"
                        if customer.metadata_tenant_id
                        else ""
                    ),
                    customer_id=customer.customer_id,
                )
            )

    for invoice in sorted(invoices, key=lambda i: i.invoice_id):
        if invoice_stuck(invoice, as_of):
            owner = tenant_by_customer.get(invoice.customer_id)
            add(
                INVOICE_STUCK_IN_DRAFT,
                owner,
                f"invoice {invoice.invoice_id} is still a draft"
                + (
                    f": {invoice.finalization_error}"
                    if invoice.finalization_error
                    else " past its automatic finalization"
                ),
                customer_id=invoice.customer_id,
                subscription_id=invoice.subscription_id,
                stripe_state={"invoice": invoice.invoice_id, "amount_due": invoice.amount_due},
            )
    return out


def invoice_stuck(invoice: InvoiceSnapshot, as_of: datetime) -> bool:
    """A draft that failed to finalize, or whose automatic finalization time has passed."""
    if invoice.status != "draft":
        return False
    if invoice.finalization_error:
        return True
    due = invoice.automatically_finalizes_at
    return due is not None and due < as_of


def remediation_targets(findings: Iterable[Finding]) -> dict[str, tuple[str | None, list[str]]]:
    """Tenant -> (Stripe subscription to converge on, the categories that call for it)."""
    out: dict[str, tuple[str | None, list[str]]] = {}
    for finding in findings:
        if finding.category not in REMEDIABLE or finding.tenant_id is None:
            continue
        sub, categories = out.get(finding.tenant_id, (finding.subscription_id, []))
        out[finding.tenant_id] = (sub or finding.subscription_id, [*categories, finding.category])
    return out


# ---- the billing database ----------------------------------------------------------------------


def _rows(
    conn: psycopg.Connection[Any], sql: str, snapshot_date: date | None
) -> list[dict[str, Any]]:
    return list(conn.execute(sql, (snapshot_date,)).fetchall())


def load_snapshot(
    conn: psycopg.Connection[Any],
) -> tuple[
    date,
    datetime,
    list[TenantRow],
    list[SubscriptionSnapshot],
    list[CustomerSnapshot],
    list[InvoiceSnapshot],
]:
    """The newest snapshot and the tenant rows, read from the billing database."""
    latest = conn.execute(
        "SELECT snapshot_date, max(taken_at) AS taken_at FROM stripe_subscription_snapshots "
        "GROUP BY snapshot_date ORDER BY snapshot_date DESC LIMIT 1"
    ).fetchone()
    if latest is None:
        raise LookupError("no Stripe snapshot yet: materialize stripe_subscription_snapshot first")
    day, taken_at = latest["snapshot_date"], latest["taken_at"]
    sub_fields = [f for f in SubscriptionSnapshot.__dataclass_fields__]
    cus_fields = [f for f in CustomerSnapshot.__dataclass_fields__]
    inv_fields = [f for f in InvoiceSnapshot.__dataclass_fields__]
    subs = [
        SubscriptionSnapshot(**{k: r[k] for k in sub_fields})
        for r in _rows(
            conn, "SELECT * FROM stripe_subscription_snapshots WHERE snapshot_date = %s", day
        )
    ]
    customers = [
        CustomerSnapshot(**{k: r[k] for k in cus_fields})
        for r in _rows(
            conn, "SELECT * FROM stripe_customer_snapshots WHERE snapshot_date = %s", day
        )
    ]
    newest = conn.execute(
        "SELECT max(snapshot_date) AS d FROM stripe_invoice_snapshots WHERE snapshot_date <= %s",
        (day,),
    ).fetchone()
    invoice_day = newest["d"] if newest else None
    invoices = [
        InvoiceSnapshot(**{k: r[k] for k in inv_fields})
        for r in _rows(
            conn,
            "SELECT * FROM stripe_invoice_snapshots WHERE snapshot_date = %s AND status = 'draft'",
            invoice_day,
        )
    ]
    tenants = [
        TenantRow(
            tenant_id=r["tenant_id"],
            plan=r["plan"],
            stripe_customer_id=r["stripe_customer_id"],
            stripe_subscription_id=r["stripe_subscription_id"],
            billing_status=r["billing_status"],
            subscription_status=r["subscription_status"],
            api_access_enabled=bool(r["api_access_enabled"]),
        )
        for r in conn.execute(
            "SELECT tenant_id, plan, stripe_customer_id, stripe_subscription_id, billing_status, "
            "subscription_status, api_access_enabled FROM tenants"
        ).fetchall()
    ]
    return day, taken_at, tenants, subs, customers, invoices


def store_findings(
    conn: psycopg.Connection[Any], snapshot_date: date, findings: list[Finding]
) -> None:
    """Replace the snapshot date's findings."""
    from psycopg.types.json import Jsonb

    conn.execute(
        "DELETE FROM subscription_state_findings WHERE snapshot_date = %s", (snapshot_date,)
    )
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO subscription_state_findings (snapshot_date, category, revenue_leak,
                tenant_id, customer_id, subscription_id, detail, local_state, stripe_state)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    snapshot_date,
                    f.category,
                    f.revenue_leak,
                    f.tenant_id,
                    f.customer_id,
                    f.subscription_id,
                    f.detail,
                    None if f.local_state is None else Jsonb(f.local_state),
                    None if f.stripe_state is None else Jsonb(f.stripe_state),
                )
                for f in findings
            ],
        )


def findings_table(findings: list[Finding], limit: int = 50) -> str:
    """Findings as a markdown table for the Dagster UI."""
    return markdown.table(
        ["category", "tenant", "customer", "subscription", "detail"],
        [
            (f.category, f.tenant_id or "", f.customer_id or "", f.subscription_id or "", f.detail)
            for f in findings
        ],
        limit=limit,
    )
