"""When a dunning step runs: one run per (invoice, step) the failed attempts reached."""

import dagster as dg

from billing_pipelines.defs.dunning.jobs import DunningStepConfig, dunning_step_job
from billing_pipelines.defs.queue_runs import DUNNING_INTERVAL_SECONDS
from billing_pipelines.defs.readiness import stripe_not_ready
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.dunning import steps as dunning
from billing_pipelines.lib.dunning.ladder import DEFAULT_LADDER


@dg.sensor(
    job=dunning_step_job,
    minimum_interval_seconds=DUNNING_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def dunning_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """One run per (invoice, step) failed payments reached; run_key = invoice + step + dispatch."""
    if reason := stripe_not_ready():
        return dg.SkipReason(reason)
    with billing_db.transaction() as conn:
        # The dispatch generation re-asks for a step whose run failed with all its retries.
        due = dunning.dispatch_steps(conn, dunning.due_steps(conn, DEFAULT_LADDER))
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
            tags={
                "billing/invoice": item.invoice_id,
                "billing/dunning_step": str(item.step),
                "billing/dispatch": str(item.dispatch),
            },
        )
        for item in due
    ]
    # The cursor is a hint for the UI (last keys asked for); run_key is the dedup guarantee.
    return dg.SensorResult(run_requests=requests, cursor=",".join(r.run_key for r in due[-5:]))
