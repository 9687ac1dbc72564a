"""Trial reminders: trials ending within 3 days without a payment method get one email."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.defs.webhooks.context import handler_setup
from billing_pipelines.lib import stripe_state, tenant_state, webhook_handlers


class TrialReminderConfig(dg.Config):
    """The window ahead of now (UTC) in which a trial end triggers a reminder."""

    within_days: int = 3
    as_of: str | None = None  # ISO timestamp; default now


@dg.op
def remind_trials_ending(
    context: dg.OpExecutionContext,
    config: TrialReminderConfig,
    billing_db: BillingDatabase,
    stripe: StripeResource,
) -> dg.Output[int]:
    """Check each trialing tenant's live subscription; queue at most one reminder per trial."""
    now = datetime.fromisoformat(config.as_of) if config.as_of else datetime.now(UTC)
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
            ctx = handlers.context(conn, f"trial reminders (run {context.run_id[:8]})")
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


trial_reminders_schedule = dg.ScheduleDefinition(
    name="trial_reminders_daily",
    job=trial_reminders_job,
    cron_schedule="0 9 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: trials ending within 3 days without a payment method get a reminder.",
)
