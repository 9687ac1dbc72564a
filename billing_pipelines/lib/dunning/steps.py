"""Running the dunning ladder: which (invoice, step) is due and asked for; one step, once."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from billing_pipelines.lib.dunning.ladder import DunningLadder
from billing_pipelines.lib.notifications import emails as notifications
from billing_pipelines.lib.stripe import reads as stripe_state
from billing_pipelines.lib.tenants import access as tenant_state
from billing_pipelines.lib.webhooks.handlers import (
    HandlerContext,
    Outcome,
    apply_invoice_state,
    converge_tenant,
    explain_usage,
)

if TYPE_CHECKING:
    import psycopg

# A step still due after its run was asked for is asked for again (a new run_key) after 15 min,
# then 30 min, 1 h, ... at most every 6 h: a run that failed with all its retries (a Stripe
# outage) is retried until the step is recorded, and a slow queue gets a harmless duplicate at
# worst (a step is recorded once per invoice under a row lock).
REDISPATCH_BASE_SECONDS = 900.0
REDISPATCH_MAX_SECONDS = 6 * 3600.0


@dataclass(frozen=True)
class DueStep:
    """One rung to run for one invoice; (invoice_id, step, dispatch) is the run_key."""

    invoice_id: str
    tenant_id: str
    step: int
    dispatch: int = 1

    @property
    def run_key(self) -> str:
        """The business id of this run: one run per invoice, step and dispatch generation."""
        return f"dunning:{self.invoice_id}:{self.step}:{self.dispatch}"


def dispatch_steps(
    conn: psycopg.Connection[Any],
    due: list[DueStep],
    *,
    base_seconds: float = REDISPATCH_BASE_SECONDS,
    max_seconds: float = REDISPATCH_MAX_SECONDS,
) -> list[DueStep]:
    """The due steps with their dispatch generation, bumped for those asked for long enough ago.

    The first time a step is due it is generation 1. While it stays due (its run failed, or
    never ran), the generation goes up once `base_seconds * 2**(generation - 1)` (capped) have
    passed since the last dispatch, which gives the sensor a new run_key to ask for.
    """
    out = []
    for item in due:
        row = conn.execute(
            """
            INSERT INTO dunning_dispatches AS d (invoice_id, step) VALUES (%(invoice)s, %(step)s)
            ON CONFLICT (invoice_id, step) DO UPDATE
                SET dispatch_count = d.dispatch_count + 1, dispatched_at = now()
                WHERE d.dispatched_at <= now() - make_interval(
                    secs => least(%(max)s, %(base)s * power(2, d.dispatch_count - 1)))
            RETURNING dispatch_count
            """,
            {
                "invoice": item.invoice_id,
                "step": item.step,
                "base": base_seconds,
                "max": max_seconds,
            },
        ).fetchone()
        if row is None:  # dispatched recently: the same generation (the same run_key) again
            row = conn.execute(
                "SELECT dispatch_count FROM dunning_dispatches WHERE invoice_id = %s AND step = %s",
                (item.invoice_id, item.step),
            ).fetchone()
        assert row is not None
        count = row["dispatch_count"] if isinstance(row, dict) else row[0]
        out.append(replace(item, dispatch=int(count)))
    return out


# A subscription whose first payment failed never had access and Stripe never retries that
# invoice (it expires instead): the ladder does not escalate it.
_FIRST_PAYMENT_STATUSES = ("incomplete", "incomplete_expired")


def stripe_retries(next_payment_attempt: object, subscription_status: str | None) -> bool:
    """Whether Stripe will attempt this unpaid invoice again (or the case is a first payment)."""
    return next_payment_attempt is not None or subscription_status in _FIRST_PAYMENT_STATUSES


def due_steps(conn: psycopg.Connection[Any], ladder: DunningLadder) -> list[DueStep]:
    """Open cases whose failed attempts have reached a rung not yet executed."""
    rows = conn.execute(
        """
        SELECT c.invoice_id, c.tenant_id, c.attempt_count, c.next_payment_attempt,
               t.subscription_status,
               coalesce(array_agg(a.step) FILTER (WHERE a.step IS NOT NULL), '{}') AS steps
        FROM dunning_cases c
        JOIN tenants t ON t.tenant_id = c.tenant_id
        LEFT JOIN dunning_actions a ON a.invoice_id = c.invoice_id
        WHERE c.status = 'open'
        GROUP BY c.invoice_id, c.tenant_id, c.attempt_count, c.next_payment_attempt,
                 t.subscription_status
        ORDER BY min(c.opened_at), c.invoice_id
        """
    ).fetchall()
    due = []
    for row in rows:
        retrying = stripe_retries(row["next_payment_attempt"], row["subscription_status"])
        step = ladder.due_step(int(row["attempt_count"]), row["steps"], retrying)
        if step is not None:
            due.append(DueStep(row["invoice_id"], row["tenant_id"], step))
    return due


def execute_step(ctx: HandlerContext, invoice_id: str, step: int) -> Outcome:
    """Run one rung: re-read the invoice; act only if it is still unpaid at that attempt."""
    conn = ctx.conn
    ladder = ctx.ladder
    rung = ladder.step(step)
    case = conn.execute(
        "SELECT tenant_id, first_failed_at FROM dunning_cases WHERE invoice_id = %s",
        (invoice_id,),
    ).fetchone()
    if case is None:
        return Outcome("ignored", f"no dunning case for {invoice_id}")
    tenant = tenant_state.lock_by_id(conn, case["tenant_id"])
    assert tenant is not None  # foreign key
    invoice = stripe_state.fetch_invoice(ctx.client, invoice_id, with_lines=True)
    if invoice.settled:
        apply_invoice_state(ctx, tenant, invoice)
        return Outcome("ignored", f"invoice {invoice_id} is {invoice.status}: step {step} skipped")
    retrying = stripe_retries(invoice.next_payment_attempt, tenant.state.subscription_status)
    if ladder.step_reached(invoice.attempt_count, retrying) < step:
        return Outcome("ignored", f"invoice {invoice_id} has {invoice.attempt_count} attempts")
    done = {
        int(r["step"])
        for r in conn.execute(
            "SELECT step FROM dunning_actions WHERE invoice_id = %s FOR UPDATE", (invoice_id,)
        )
    }
    if step in done or (done and max(done) > step):
        return Outcome("ignored", f"step {step} of {invoice_id} already done")
    # Rungs we jumped over are recorded as skipped: the ladder only ever moves up.
    for lower in range(1, step):
        if lower not in done:
            _record(conn, invoice_id, tenant.tenant_id, lower, "skipped", {"jumped_to": step})
    # From Stripe's real attempts and its next planned one, never from an assumed schedule.
    suspension = ladder.suspension_date(invoice.attempt_count, invoice.next_payment_attempt)
    access, multiplier = ladder.effects(step)
    details = {
        "attempt_count": invoice.attempt_count,
        "amount_due": invoice.amount_remaining or invoice.amount_due,
        "currency": invoice.currency,
        "suspension_date": suspension.isoformat() if suspension else None,
        "next_payment_attempt": (
            invoice.next_payment_attempt.isoformat() if invoice.next_payment_attempt else None
        ),
    }
    _record(conn, invoice_id, tenant.tenant_id, step, rung.action, details)
    tenant_state.audit(
        conn,
        actor=ctx.actor,
        action=f"dunning.{rung.action}",
        entity_type="invoice",
        entity_id=invoice_id,
        reason=f"payment failed {invoice.attempt_count} time(s): dunning step {step}",
        before={"step": max(done, default=0)},
        after={"step": step, **details},
    )
    converge_tenant(
        ctx,
        tenant,
        reason=f"dunning step {step} ({rung.action}) for invoice {invoice_id}: "
        f"payment failed {invoice.attempt_count} time(s)",
    )
    notifications.enqueue(
        conn,
        dedup_key=f"dunning:{invoice_id}:{step}",
        tenant_id=tenant.tenant_id,
        template=rung.template,
        recipient=tenant.email,
        context={
            "tenant_name": tenant.name,
            "invoice_number": invoice.number or invoice.id,
            "invoice_url": invoice.hosted_invoice_url,
            "amount_due": notifications.format_money(
                invoice.amount_remaining or invoice.amount_due, invoice.currency
            ),
            "attempt_count": invoice.attempt_count,
            "next_attempt": notifications.format_day(invoice.next_payment_attempt),
            "suspension_date": notifications.format_day(suspension),
            "attempts_before_suspension": ladder.attempts_before_suspension(invoice.attempt_count),
            "rate_limit_percent": int(multiplier * 100),
            "api_access_enabled": access,
            "usage_explanation": explain_usage(ctx, tenant, invoice),
            "tax_note": notifications.tax_sentence(
                invoice.subtotal,
                invoice.tax,
                invoice.total,
                invoice.currency,
                taxed=invoice.automatic_tax,
            ),
        },
    )
    return Outcome("processed", f"dunning step {step} ({rung.action}) for {invoice_id}")


def _record(
    conn: psycopg.Connection[Any],
    invoice_id: str,
    tenant_id: str,
    step: int,
    action: str,
    details: dict[str, Any],
) -> None:
    conn.execute(
        """
        INSERT INTO dunning_actions (invoice_id, tenant_id, step, action, details)
        VALUES (%s, %s, %s, %s, %s::jsonb)
        ON CONFLICT (invoice_id, step) DO NOTHING
        """,
        (invoice_id, tenant_id, step, action, json.dumps(details, default=str)),
    )
