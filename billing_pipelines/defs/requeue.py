"""Requeueing dead letters from the launchpad or the CLI: the shared config and op body."""

import dagster as dg
from pydantic import Field

from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.pg import requeue


class RequeueConfig(dg.Config):
    """Which dead rows to send again (every given criterion must match), who asks, and why."""

    ids: list[int] = Field(default_factory=list, description="Queue row ids (the `id` column)")
    type: str | None = Field(
        default=None, description="Only rows of this type (event type, or email template)"
    )
    since: str | None = Field(
        default=None,
        description="Only rows received or queued at or after this time (ISO 8601 with a zone)",
    )
    requested_by: str = Field(description="Who asks for the requeue (recorded in the audit log)")
    reason: str = Field(description="Why (recorded in the audit log), e.g. 'SMTP outage fixed'")


def requeue_from_config(
    context: dg.OpExecutionContext,
    config: RequeueConfig,
    billing_db: BillingDatabase,
    letters: requeue.DeadLetters,
) -> dg.Output[dict[str, list[int]]]:
    """Requeue the chosen dead rows in one audited transaction; the run's metadata lists them."""
    selection = requeue.Selection(
        ids=tuple(config.ids), kind=config.type, since=requeue.parse_since(config.since)
    )
    actor = f"{config.requested_by.strip()} (run {context.run.run_id[:8]})"
    with billing_db.transaction() as conn:
        rows = requeue.requeue_dead(
            conn, letters, selection, actor=actor, reason=config.reason.strip()
        )
    skipped = requeue.skipped_ids(config.ids, rows)
    for row in rows:
        context.log.info(f"requeued {row.id} {row.kind} {row.item} (was dead: {row.last_error})")
    if skipped:
        context.log.warning(f"not dead (or unknown), left as they are: {skipped}")
    return dg.Output(
        {"requeued": [row.id for row in rows], "not_dead_or_unknown": skipped},
        metadata={
            "requeued": dg.MetadataValue.int(len(rows)),
            "selection": dg.MetadataValue.text(selection.describe()),
            "ids": dg.MetadataValue.text(",".join(str(r.id) for r in rows) or "none"),
            "not_dead_or_unknown": dg.MetadataValue.text(",".join(map(str, skipped)) or "none"),
        },
    )
