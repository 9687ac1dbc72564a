"""The dunning ladder in Dagster: one run per invoice and step, decided on the live invoice."""

import dagster as dg

from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.defs.webhooks.context import handler_context
from billing_pipelines.lib import dunning
from billing_pipelines.lib.dunning_ladder import DEFAULT_LADDER


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
    actor = f"dunning {config.invoice_id} step {config.step} (run {context.run_id[:8]})"
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


@dg.job(tags={"domain": "dunning"})
def dunning_step_job() -> None:
    """Run one rung of the dunning ladder for one unpaid invoice."""
    execute_dunning_step()


@dg.sensor(
    job=dunning_step_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def dunning_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One run per (invoice, step) that failed payments have reached; run_key = invoice + step."""
    with billing_db.transaction() as conn:
        due = dunning.due_steps(conn, DEFAULT_LADDER)
    if not due:
        return dg.SkipReason("no dunning step due")
    requests = [
        dg.RunRequest(
            run_key=item.run_key,
            run_config=dg.RunConfig(
                ops={
                    "execute_dunning_step": DunningStepConfig(
                        invoice_id=item.invoice_id, step=item.step
                    )
                }
            ),
            tags={"billing/invoice": item.invoice_id, "billing/dunning_step": str(item.step)},
        )
        for item in due
    ]
    # The cursor is a hint for the UI (last keys asked for); run_key is the dedup guarantee.
    return dg.SensorResult(run_requests=requests, cursor=",".join(r.run_key for r in due[-5:]))
