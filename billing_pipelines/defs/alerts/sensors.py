"""Alerts: every failed run and every failed ERROR asset check notifies the configured channel."""

from collections.abc import Iterable

import dagster as dg
from dagster import DagsterEventType

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


@dg.run_failure_sensor(
    name="failed_run_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def failed_run_alert_sensor(
    context: dg.RunFailureSensorContext, billing_db: BillingDatabase
) -> None:
    """Alert once per failed run, and once per failed ERROR check inside it."""
    run = context.dagster_run
    ui_url = alert_channel().ui_url
    error = context.failure_event.message if context.failure_event else None
    failures = [
        alerting.run_failure(run_id=run.run_id, job_name=run.job_name, error=error, ui_url=ui_url),
        *failed_error_checks(context.instance, run, ui_url),
    ]
    raised = send(billing_db, failures)
    context.log.info(f"run {run.run_id}: {raised} alert(s) raised")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="failed_check_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def failed_check_alert_sensor(
    context: dg.RunStatusSensorContext, billing_db: BillingDatabase
) -> None:
    """Alert once per failed ERROR asset check in a run that otherwise succeeded."""
    run = context.dagster_run
    failures = failed_error_checks(context.instance, run, alert_channel().ui_url)
    if failures:
        raised = send(billing_db, failures)
        context.log.info(f"run {run.run_id}: {raised} check alert(s) raised")
