"""Remediation of reconciliation findings: Stripe is the truth for subscription state.

Each flagged tenant is converged with the same step the webhook handlers use
(`webhook_handlers.converge_tenant`: lock the tenant, re-read the subscription from Stripe now,
recompute access with the dunning ladder, write and audit). A dry run does exactly the same
inside a transaction that is rolled back, so its preview is what a real run would do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from billing_pipelines.lib.alerts import channels as alerting
from billing_pipelines.lib.catalog.plans import Catalog
from billing_pipelines.lib.reconciliation import diff as reconciliation
from billing_pipelines.lib.tenants import access as tenant_state
from billing_pipelines.lib.tenants.access import TenantState
from billing_pipelines.lib.webhooks import handlers as webhook_handlers

if TYPE_CHECKING:
    import psycopg

    from billing_pipelines.lib.stripe.client import StripeClient

Conn: TypeAlias = "psycopg.Connection[Any]"
Transaction = Callable[[], AbstractContextManager[Conn]]


@dataclass(frozen=True)
class Target:
    """A tenant to converge, on which Stripe subscription, and why."""

    tenant_id: str
    subscription_id: str | None
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    """What remediation did (or would do) to one tenant."""

    target: Target
    change: tuple[TenantState, TenantState] | None
    error: str | None = None

    def line(self, dry_run: bool) -> str:
        """One log line."""
        verb = "would change" if dry_run else "changed"
        if self.error:
            return f"{self.target.tenant_id}: not remediated: {self.error}"
        if self.change is None:
            return f"{self.target.tenant_id}: already matches Stripe"
        before, after = self.change
        return (
            f"{self.target.tenant_id}: {verb} {before.billing_status}/"
            f"{'access' if before.api_access_enabled else 'no access'} -> "
            f"{after.billing_status}/{'access' if after.api_access_enabled else 'no access'} "
            f"({', '.join(self.target.categories)})"
        )


def latest_targets(conn: Conn, only: set[str] | None = None) -> list[Target]:
    """Tenants with remediable findings in the newest diff."""
    rows = conn.execute(
        """
        SELECT category, tenant_id, subscription_id FROM subscription_state_findings
        WHERE snapshot_date = (SELECT max(snapshot_date) FROM subscription_state_findings)
          AND tenant_id IS NOT NULL
        ORDER BY tenant_id, id
        """
    ).fetchall()
    findings = [
        reconciliation.Finding(
            category=r["category"],
            revenue_leak=False,
            detail="",
            tenant_id=r["tenant_id"],
            subscription_id=r["subscription_id"],
        )
        for r in rows
    ]
    targets = reconciliation.remediation_targets(findings)
    return [
        Target(tenant, sub, tuple(categories))
        for tenant, (sub, categories) in sorted(targets.items())
        if only is None or tenant in only
    ]


class _Rollback(Exception):
    """Raised inside a dry run's transaction so nothing it wrote is kept."""


def remediate(
    transaction: Transaction,
    client: StripeClient,
    catalog: Catalog,
    targets: Iterable[Target],
    *,
    actor: str,
    dry_run: bool,
    alert_email: str | None = None,
) -> list[Outcome]:
    """Converge each target in its own transaction; a dry run rolls every one back."""
    from billing_pipelines.lib.stripe.client import StripeError

    outcomes = []
    for target in targets:
        result: list[tuple[TenantState, TenantState] | None] = [None]
        try:
            with transaction() as conn:
                tenant = tenant_state.lock_by_id(conn, target.tenant_id)
                if tenant is None:
                    outcomes.append(Outcome(target, None, "tenant no longer exists"))
                    continue
                ctx = webhook_handlers.HandlerContext(
                    conn=conn, client=client, catalog=catalog, actor=actor, alert_email=alert_email
                )
                result[0] = webhook_handlers.converge_tenant(
                    ctx,
                    tenant,
                    reason=f"reconciliation found {', '.join(target.categories)}; "
                    "Stripe is the source of truth",
                    subscription_id=target.subscription_id,
                )
                if dry_run:
                    raise _Rollback
        except _Rollback:
            pass
        except StripeError as exc:
            outcomes.append(
                Outcome(target, None, f"Stripe {type(exc).__name__}: {exc.user_message or ''}")
            )
            continue
        outcomes.append(Outcome(target, result[0]))
    return outcomes


def admin_alert(run_id: str, changed: list[Outcome], ui_url: str | None) -> alerting.Failure:
    """The admin notice that remediation changed tenants' access."""
    revoked = [
        o.target.tenant_id for o in changed if o.change and not o.change[1].api_access_enabled
    ]
    return alerting.Failure(
        dedup_key=f"remediation:{run_id}",
        kind="reconciliation_remediation",
        summary=f"Remediation applied Stripe's state to {len(changed)} tenant(s)",
        reason=(f"access revoked for {', '.join(revoked)}; " if revoked else "")
        + "; ".join(o.line(False) for o in changed[:20]),
        link=alerting.run_link(ui_url, run_id),
        details={"run_id": run_id, "tenants": [o.target.tenant_id for o in changed]},
    )


def table(outcomes: list[Outcome], dry_run: bool) -> str:
    """Outcomes as markdown for the run's metadata."""
    if not outcomes:
        return "nothing to remediate"
    return "\n".join(f"- {o.line(dry_run)}" for o in outcomes)
