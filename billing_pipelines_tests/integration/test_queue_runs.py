"""How queue-consuming runs start, as Dagster loads them: the code location's jobs and sensors,
and the instance the shipped dagster.yaml (and the one `billing sandbox up` writes) configures."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml
from billing_sandbox import services
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME
from dagster._utils.tags import TagConcurrencyLimitsCounter

from billing_pipelines.definitions import defs

ROOT = Path(__file__).resolve().parents[2]

# The jobs a sensor launches for each queue table, and the queue each drains.
QUEUE_JOBS = {
    "webhook_events_job": "webhook_events",
    "dunning_step_job": "dunning",
    "notification_delivery_job": "notification_outbox",
}


@pytest.fixture(scope="module")
def loaded() -> dg.Definitions:
    return defs()


@pytest.mark.parametrize("job_name", sorted(QUEUE_JOBS))
def test_queue_jobs_run_their_op_in_the_run_process(loaded: dg.Definitions, job_name: str) -> None:
    job = loaded.resolve_job_def(job_name)
    assert job.executor_def.name == "in_process"
    assert job.tags["billing/queue"] == QUEUE_JOBS[job_name]


def test_every_job_runs_its_steps_in_the_run_process(loaded: dg.Definitions) -> None:
    # What the daemon launches: the asset jobs, the implicit asset job behind the UI's
    # materializations and backfills, the admin and lifecycle jobs. None starts a step process.
    jobs = {job.name: job for job in loaded.resolve_all_job_defs()}
    implicit = loaded.resolve_implicit_global_asset_job_def()
    jobs[implicit.name] = implicit
    assert {"usage_to_stripe_job", "reconciliation_job", "daily_usage_job"} <= set(jobs)
    assert len(jobs) > 15
    executors = {name: job.executor_def.name for name, job in jobs.items()}
    assert executors == dict.fromkeys(jobs, "in_process")


def test_other_jobs_carry_no_queue_tag(loaded: dg.Definitions) -> None:
    others = [j for j in loaded.resolve_all_job_defs() if j.name not in QUEUE_JOBS]
    assert len(others) > 10
    for job in others:
        # The recovery and requeue jobs are no queue consumers.
        assert "billing/queue" not in job.tags, job.name


def test_event_and_email_sensors_tick_every_daemon_loop_and_dunning_every_thirty_seconds(
    loaded: dg.Definitions,
) -> None:
    intervals = {
        name: loaded.resolve_sensor_def(name).minimum_interval_seconds
        for name in ("webhook_events_sensor", "notification_outbox_sensor", "dunning_sensor")
    }
    # The daemon's loop wakes every 5 s: under that means every loop, and never exactly 5.
    assert MIN_INTERVAL_LOOP_TIME == 5
    assert intervals["webhook_events_sensor"] is not None
    assert intervals["webhook_events_sensor"] < MIN_INTERVAL_LOOP_TIME
    assert intervals["notification_outbox_sensor"] == intervals["webhook_events_sensor"]
    assert intervals["dunning_sensor"] == 30


@pytest.fixture(scope="module")
def shipped_instance(embedded_services: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """A DagsterInstance configured by the repository's dagster.yaml, unchanged."""
    home = tmp_path_factory.mktemp("dagster_home_shipped")
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_the_run_queue_is_checked_every_second_with_threaded_launches(
    shipped_instance: dg.DagsterInstance,
) -> None:
    coordinator = shipped_instance.run_coordinator
    assert isinstance(coordinator, QueuedRunCoordinator)
    assert coordinator.dequeue_interval_seconds == 1
    assert coordinator.dequeue_use_threads is True
    assert coordinator.dequeue_num_workers == 4
    queue = shipped_instance.get_concurrency_config().run_queue_config
    assert queue is not None and queue.max_concurrent_runs == 4
    assert shipped_instance.get_sensor_settings() == {"use_threads": True, "num_workers": 4}


def _run(job: dg.JobDefinition, run_id: str) -> dg.DagsterRun:
    """A run of the job as the sensor creates it: the job's tags plus the request's own."""
    return dg.DagsterRun(job_name=job.name, run_id=run_id, tags={**job.tags, "extra": run_id})


def test_one_run_per_queue_at_a_time_and_queues_do_not_block_each_other(
    shipped_instance: dg.DagsterInstance, loaded: dg.Definitions
) -> None:
    queue = shipped_instance.get_concurrency_config().run_queue_config
    assert queue is not None
    webhook = loaded.resolve_job_def("webhook_events_job")
    dunning = loaded.resolve_job_def("dunning_step_job")
    outbox = loaded.resolve_job_def("notification_delivery_job")
    reconciliation = loaded.resolve_job_def("reconciliation_job")

    in_progress = [_run(webhook, "w1")]
    counter = TagConcurrencyLimitsCounter(queue.tag_concurrency_limits, in_progress)
    assert counter.is_blocked(_run(webhook, "w2"))
    assert not counter.is_blocked(_run(dunning, "d1"))
    assert not counter.is_blocked(_run(outbox, "o1"))
    assert not counter.is_blocked(_run(reconciliation, "r1"))

    # Every queue's consumer at once: still none blocked by another queue's run.
    counter = TagConcurrencyLimitsCounter(
        queue.tag_concurrency_limits, [_run(dunning, "d1"), _run(outbox, "o1")]
    )
    assert not counter.is_blocked(_run(webhook, "w1"))
    assert counter.is_blocked(_run(dunning, "d2"))
    assert counter.is_blocked(_run(outbox, "o2"))


def test_the_generated_dagster_yaml_is_the_shipped_one(tmp_path: Path) -> None:
    """What `billing sandbox up` writes under BILLING_HOME is the shipped file, plus the sandbox's
    compute-log manager (no echo processes; see billing_sandbox.compute_logs)."""
    home = services._dagster_home(tmp_path)
    generated = yaml.safe_load((home / "dagster.yaml").read_text())
    shipped = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert "compute_logs" not in shipped  # production keeps Dagster's own manager
    assert generated.pop("compute_logs") == {
        "module": "billing_sandbox.compute_logs",
        "class": "FileComputeLogManager",
        "config": {"base_dir": str(home / "storage")},
    }
    assert generated == shipped
    assert generated["run_coordinator"]["config"]["dequeue_interval_seconds"] == 1
    assert generated["concurrency"]["runs"]["tag_concurrency_limits"] == [
        {"key": "billing/queue", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]


def test_every_job_accepts_the_config_that_runs_it_in_this_process(
    loaded: dg.Definitions,
) -> None:
    # The demo's month and the CLI start runs in process (`runs.execute`): the in-process
    # executor has no `in_process` entry, Dagster's default executor needs it (the job below
    # declares it, as a job of the location could).
    from dagster._config import process_config

    from billing_pipelines import runs

    @dg.op
    def step() -> None:
        pass

    @dg.job(executor_def=dg.multi_or_in_process_executor)
    def on_default_executor() -> None:
        step()

    jobs = [loaded.resolve_job_def(job.name) for job in loaded.resolve_all_job_defs()]
    assert {job.name for job in jobs} >= set(QUEUE_JOBS)
    assert runs.in_process_config(on_default_executor) == runs.IN_PROCESS
    for job in [*jobs, on_default_executor]:
        execution = runs.in_process_config(job).get("execution", {}).get("config", {})
        checked = process_config(job.executor_def.config_schema.config_type, execution)
        assert checked.success, (job.name, checked.errors)
        if job.executor_def.name != "in_process":
            assert "in_process" in execution, job.name
