"""Alerts: every failed run and every failed ERROR asset check notifies the configured channel."""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster import DagsterEventType, RunStatusChangeRecordsFilter

from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.alerts import channels as alerting
from billing_pipelines.settings import load_settings


def alert_channel() -> alerting.AlertChannel:
    """The channel from ALERT_EMAIL / ALERT_CHAT_WEBHOOK_URL / DAGSTER_UI_URL (read now)."""
    settings = load_settings()
    chat = settings.alert_chat_webhook_url
    return alerting.AlertChannel(
        email=settings.alert_email,
        chat_webhook_url=chat.get_secret_value() if chat else None,
        ui_url=settings.dagster_ui_url,
    )


def failed_error_checks(
    instance: dg.DagsterInstance, run: dg.DagsterRun, ui_url: str | None
) -> list[alerting.Failure]:
    """The failed ERROR-severity asset checks evaluated in a run."""
    out = []
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        event = entry.dagster_event
        if event is None:
            continue
        evaluation = event.asset_check_evaluation_data
        if evaluation.passed or evaluation.severity != dg.AssetCheckSeverity.ERROR:
            continue
        out.append(
            alerting.check_failure(
                run_id=run.run_id,
                job_name=run.job_name,
                asset=evaluation.asset_key.to_user_string(),
                check_name=evaluation.check_name,
                partition=evaluation.partition,
                description=evaluation.description,
                metadata={k: v.value for k, v in evaluation.metadata.items()},
                ui_url=ui_url,
            )
        )
    return out


def send(billing_db: BillingDatabase, failures: Iterable[alerting.Failure]) -> int:
    """Raise each failure once on the configured channel; deliver pending chat alerts."""
    channel = alert_channel()
    raised = 0
    with billing_db.transaction() as conn:
        for failure in failures:
            raised += alerting.raise_failure(conn, failure, channel)
    if channel.chat_webhook_url:
        # Claims and outcomes are committed apart from the posts, so delivery opens its own.
        alerting.deliver_chat(billing_db.transaction, channel.chat_webhook_url)
    return raised


# A sensor with no cursor yet (a new instance, a renamed sensor) looks back this far, so
# failures from before the daemon started still alert, without replaying years of history.
FIRST_TICK_LOOKBACK = timedelta(days=7)
# Run ends handled per tick; the cursor carries the rest over to the next tick.
BATCH = 100


def run_ends(
    instance: dg.DagsterInstance, event_type: DagsterEventType, cursor: str | None
) -> tuple[list[tuple[dg.DagsterRun, str | None]], str | None]:
    """Runs that ended with `event_type` after the cursor (or within the lookback), oldest first.

    The cursor is the event log's own record cursor: it resumes where the last tick stopped,
    whether the daemon was running when the run ended or not.
    """
    records_filter = RunStatusChangeRecordsFilter(
        event_type=event_type,  # type: ignore[arg-type]
        after_timestamp=None if cursor else (datetime.now(UTC) - FIRST_TICK_LOOKBACK).timestamp(),
    )
    page = instance.fetch_run_status_changes(
        records_filter, limit=BATCH, cursor=cursor, ascending=True
    )
    out = []
    for record in page.records:
        run = instance.get_run_by_id(record.run_id)
        if run is None:
            continue
        event = record.event_log_entry.dagster_event
        out.append((run, event.message if event is not None else None))
    return out, page.cursor if page.records else cursor


@dg.sensor(
    name="failed_run_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def failed_run_alert_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """Alert once per failed run, and once per failed ERROR check inside it."""
    ended, cursor = run_ends(context.instance, DagsterEventType.RUN_FAILURE, context.cursor)
    if not ended:
        return dg.SkipReason("no run failed since the last tick")
    ui_url = alert_channel().ui_url
    failures = []
    for run, error in ended:
        failures.append(
            alerting.run_failure(
                run_id=run.run_id, job_name=run.job_name, error=error, ui_url=ui_url
            )
        )
        failures.extend(failed_error_checks(context.instance, run, ui_url))
    raised = send(billing_db, failures)
    context.log.info(f"{len(ended)} failed run(s): {raised} alert(s) raised")
    return dg.SensorResult(cursor=cursor)


@dg.sensor(
    name="failed_check_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def failed_check_alert_sensor(
    context: dg.SensorEvaluationContext, billing_db: BillingDatabase
) -> dg.SensorResult | dg.SkipReason:
    """Alert once per failed ERROR asset check in a run that otherwise succeeded."""
    ended, cursor = run_ends(context.instance, DagsterEventType.RUN_SUCCESS, context.cursor)
    if not ended:
        return dg.SkipReason("no run succeeded since the last tick")
    ui_url = alert_channel().ui_url
    failures = [f for run, _ in ended for f in failed_error_checks(context.instance, run, ui_url)]
    raised = send(billing_db, failures) if failures else 0
    context.log.info(f"{len(ended)} successful run(s): {raised} check alert(s) raised")
    return dg.SensorResult(cursor=cursor)
