"""Alert texts: what failed, why, a link to the run; dedup keys once per failure."""

from __future__ import annotations

from billing_pipelines.lib.alerts import channels as alerting


def test_check_failure_text_names_the_check_the_reason_and_links_the_run() -> None:
    failure = alerting.check_failure(
        run_id="abc-123",
        job_name="reconciliation_job",
        asset="subscription_state_diff",
        check_name="no_canceled_subscription_served",
        partition=None,
        description="1 revenue leak(s): run subscription_remediation_job",
        metadata={"leaks": 1},
        ui_url="https://dagster.example/",
    )
    assert (
        failure.dedup_key
        == "check_failed:abc-123:subscription_state_diff:no_canceled_subscription_served:-"
    )
    text = alerting.text_of(failure)
    assert "no_canceled_subscription_served failed on subscription_state_diff" in text
    assert "Why: 1 revenue leak(s)" in text
    assert "Run: https://dagster.example/runs/abc-123" in text


def test_partitioned_check_and_run_failure() -> None:
    failure = alerting.check_failure(
        run_id="r",
        job_name="j",
        asset="stripe_meter_reports",
        check_name="usage_within_stripe_window",
        partition="2026-11-01",
        description=None,
        metadata={"stranded": 2},
        ui_url=None,
    )
    assert failure.summary.endswith("stripe_meter_reports [2026-11-01]")
    assert failure.reason == "stranded=2" and failure.link is None
    run = alerting.run_failure(
        run_id="r2", job_name="usage_to_stripe_job", error="boom\ntrace", ui_url=None
    )
    assert run.dedup_key == "run_failed:r2" and run.reason == "boom"
