"""What an operator does about a failing reconciliation check, in one plain paragraph.

A check description names who is affected (tenants, invoices, customers) and the next step:
the Dagster job to launch or the command to run. Descriptions are read in the UI, in alerts
and by the demo report, so they are sentences, not tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from billing_pipelines.lib.reconciliation import diff as rec

REMEDIATION_STEP = (
    "launch subscription_remediation_job (it dry-runs by default: read its table, then "
    "launch it again with dry_run unticked to apply Stripe's state to the tenant rows)"
)

# The next step for each category, in the operator's words.
NEXT_STEP = {
    rec.CANCELED_ACTIVE: REMEDIATION_STEP,
    rec.PLAN_MISMATCH: REMEDIATION_STEP,
    rec.STATUS_MISMATCH: REMEDIATION_STEP,
    rec.TRIAL_ENDED_NO_PAYMENT_METHOD: REMEDIATION_STEP,
    rec.SUBSCRIPTION_INCOMPLETE: REMEDIATION_STEP,
    rec.TENANT_WITHOUT_SUBSCRIPTION: (
        "subscribe the tenant (`billing tenant create` for a new one) or turn its API access "
        "off; remediation cannot, as Stripe has nothing to converge on"
    ),
    rec.CUSTOMER_WITHOUT_TENANT: (
        "set the Stripe customer's metadata tenant_id to its tenant, or delete the customer "
        "in Stripe if it is a leftover"
    ),
    rec.INVOICE_STUCK_IN_DRAFT: (
        "open the invoice in the Stripe dashboard, fix its finalization error (tax location, "
        "customer address) and finalize it"
    ),
}

LABEL = {
    rec.CANCELED_ACTIVE: "tenant(s) served although cancelled in Stripe",
    rec.PLAN_MISMATCH: "tenant(s) on another plan than Stripe bills",
    rec.STATUS_MISMATCH: "tenant(s) with another status than Stripe's",
    rec.TENANT_WITHOUT_SUBSCRIPTION: "tenant(s) served without a Stripe subscription",
    rec.CUSTOMER_WITHOUT_TENANT: "Stripe customer(s) without a tenant",
    rec.TRIAL_ENDED_NO_PAYMENT_METHOD: "tenant(s) served after a trial ended without a card",
    rec.INVOICE_STUCK_IN_DRAFT: "invoice(s) stuck in draft",
    rec.SUBSCRIPTION_INCOMPLETE: "tenant(s) served on a subscription never paid for",
}


def names(items: Iterable[str], limit: int = 8) -> str:
    """`a, b, c and 4 more`: distinct names in first-seen order, capped for one line."""
    seen = list(dict.fromkeys(items))
    if len(seen) <= limit:
        return ", ".join(seen)
    return f"{', '.join(seen[:limit])} and {len(seen) - limit} more"


def who(finding: rec.Finding) -> str:
    """The tenant a finding is about, else its Stripe customer or invoice."""
    if finding.tenant_id:
        return finding.tenant_id
    invoice = (finding.stripe_state or {}).get("invoice")
    return str(invoice or finding.customer_id or "?")


def describe(findings: Sequence[rec.Finding]) -> str | None:
    """One sentence per category present: how many, who, what to do; None when clean."""
    if not findings:
        return None
    parts = []
    for category in rec.CATEGORIES:
        mine = [f for f in findings if f.category == category]
        if not mine:
            continue
        leaks = sum(1 for f in mine if f.revenue_leak)
        money = f", {leaks} of them a revenue leak" if leaks and leaks < len(mine) else ""
        money = " (revenue leak)" if leaks == len(mine) else money
        parts.append(
            f"{len(mine)} {LABEL[category]}{money}: {names(who(f) for f in mine)}. "
            f"Next: {NEXT_STEP[category]}."
        )
    return " ".join(parts)
