"""Dunning runs: one ladder step for one invoice, and the daily trial reminders."""

from datetime import datetime, timedelta

import dagster as dg

from billing_pipelines.defs.queue_runs import DUNNING_QUEUE, QUEUE_RUN_EXECUTOR, queue_job_tags
from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.defs.webhooks.context import handler_context, handler_setup
from billing_pipelines.lib.dunning import steps as dunning
from billing_pipelines.lib.dunning.ladder import DEFAULT_LADDER
from billing_pipelines.lib.stripe import reads as stripe_state
from billing_pipelines.lib.tenants import access as tenant_state
from billing_pipelines.lib.webhooks import handlers as webhook_handlers
from billing_pipelines.settings import load_settings


class DunningStepConfig(dg.Config):
    """Which rung to run for which invoice (named by the sensor)."""

    invoice_id: str
    step: int


@dg.op(retry_policy=dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL))
def execute_dunning_step(
    context: dg.OpExecutionContext,
    config: DunningStepConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.Output[str]:
    """Re-read the invoice; if still unpaid, record the step once, restrict, and notify."""
    actor = f"dunning {config.invoice_id} step {config.step} (run {context.run.run_id[:8]})"
    client = stripe.client()
    with billing_db.transaction() as conn:
        outcome = dunning.execute_step(
            handler_context(conn, client, actor), config.invoice_id, config.step
        )
    context.log.info(f"{outcome.status}: {outcome.detail}")
    return dg.Output(
        outcome.status,
        metadata={
            "invoice": dg.MetadataValue.text(config.invoice_id),
            "step": dg.MetadataValue.int(config.step),
            "action": dg.MetadataValue.text(DEFAULT_LADDER.step(config.step).action),
            "outcome": dg.MetadataValue.text(outcome.detail),
        },
    )


@dg.job(tags=queue_job_tags("dunning", DUNNING_QUEUE), executor_def=QUEUE_RUN_EXECUTOR)
def dunning_step_job() -> None:
    """Run one rung of the dunning ladder for one unpaid invoice."""
    execute_dunning_step()


class TrialReminderConfig(dg.Config):
    """The window ahead of now (UTC) in which a trial end triggers a reminder."""

    within_days: int = 3
    as_of: str | None = None  # ISO timestamp; default: the business clock (BUSINESS_CLOCK)


@dg.op
def remind_trials_ending(
    context: dg.OpExecutionContext,
    config: TrialReminderConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.Output[int]:
    """Check each trialing tenant's live subscription; queue at most one reminder per trial."""
    # Trial ends are on the business clock (a Stripe test clock in the simulated month).
    now = datetime.fromisoformat(config.as_of) if config.as_of else load_settings().now()
    with billing_db.transaction() as conn:
        candidates = [
            r["tenant_id"]
            for r in conn.execute(
                """
                SELECT tenant_id FROM tenants
                WHERE billing_status = 'trialing' AND stripe_subscription_id IS NOT NULL
                  AND trial_end > %s AND trial_end <= %s
                ORDER BY tenant_id
                """,
                (now, now + timedelta(days=config.within_days)),
            )
        ]
    handlers = handler_setup(stripe.client())
    client = handlers.client
    queued = 0
    for tenant_id in candidates:
        with billing_db.transaction() as conn:
            ctx = handlers.context(conn, f"trial reminders (run {context.run.run_id[:8]})")
            tenant = tenant_state.lock_by_id(conn, tenant_id)
            if tenant is None or tenant.state.stripe_subscription_id is None:
                continue
            subscription = stripe_state.fetch_subscription(
                client, tenant.state.stripe_subscription_id, known_plans=set(ctx.catalog.plans)
            )
            result = webhook_handlers.remind_trial_ending(ctx, tenant, subscription)
            if result and "queued for" in result:
                queued += 1
    return dg.Output(
        queued,
        metadata={
            "trialing_tenants_checked": dg.MetadataValue.int(len(candidates)),
            "reminders_queued": dg.MetadataValue.int(queued),
        },
    )


@dg.job(tags={"domain": "dunning"})
def trial_reminders_job() -> None:
    """Remind trialing tenants without a payment method that their trial ends soon."""
    remind_trials_ending()
