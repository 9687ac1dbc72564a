"""Runs Dagster jobs in-process on the configured instance, so the UI shows every CLI run.

Runs are created with the code location's origin (as workspace.yaml declares it, the way
`dagster dev` and the webserver load it), so they appear in the UI like any launched run:
on the Overview timeline, under the location, and re-executable from the UI without warning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.definitions.repository_definition.valid_definitions import (
    SINGLETON_REPOSITORY_NAME,
)
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import (
    CodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.workspace.load import location_origins_from_yaml_paths

from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.stripe import client as stripe_api

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_FILE = ROOT / "workspace.yaml"
DEFINITIONS_MODULE = "billing_pipelines.definitions"
# Runs started here execute in this process (one step after another). Every job of the code
# location declares the in-process executor (defs/executor.py), whose config has no entry to
# give; a job declaring Dagster's default executor would take this one instead.
IN_PROCESS: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}


def in_process_config(job: dg.JobDefinition) -> dict[str, Any]:
    """Run config that keeps a job's steps in this process, whatever executor it declares.

    The location's jobs run on the in-process executor already (nothing to add); a job on
    Dagster's default executor takes `in_process` as its execution config.
    """
    return {} if job.executor_def.name == "in_process" else IN_PROCESS


@functools.cache
def location_origin() -> CodeLocationOrigin | None:
    """The code location as workspace.yaml declares it (None in an install without it)."""
    if not WORKSPACE_FILE.exists():
        return None
    origins = location_origins_from_yaml_paths([str(WORKSPACE_FILE)])
    return origins[0] if origins else None


def execute(
    job_name: str,
    *,
    instance: dg.DagsterInstance,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
) -> dg.JobExecutionResult:
    """Run a job of the code location in this process, recorded with the location's origin."""
    job = code_location().resolve_job_def(job_name)
    if asset_selection:
        job = job.get_subset(asset_selection=set(asset_selection))
    origin = location_origin()
    remote = (
        None
        if origin is None
        else RemoteJobOrigin(RemoteRepositoryOrigin(origin, SINGLETON_REPOSITORY_NAME), job_name)
    )
    code = (
        ReconstructableRepository.for_module(
            DEFINITIONS_MODULE, "defs", working_directory=str(ROOT)
        )
        .get_reconstructable_job(job_name)
        .get_python_origin()
    )
    run_tags = dict(tags or {})
    if partition_key is not None:
        run_tags["dagster/partition"] = partition_key
    run = instance.create_run_for_job(
        job_def=job,
        run_config={**(run_config or {}), **in_process_config(job)},
        tags=run_tags,
        asset_selection=set(asset_selection) if asset_selection else None,
        remote_job_origin=remote,
        job_code_origin=code,
    )
    return execute_run(InMemoryJob(job), run, instance)


@functools.cache
def code_location() -> dg.Definitions:
    """The code location's definitions, built once per process (each build re-imports defs/)."""
    from billing_pipelines.definitions import defs

    return defs()


def materialize_days(
    job_name: str,
    first: date,
    last: date,
    echo: Callable[[str], object] | None = print,
    run_config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> Iterator[tuple[date, bool]]:
    """Run a daily-partitioned job for each day from first to last, reporting progress."""
    job = code_location().resolve_job_def(job_name)
    partitions = job.partitions_def
    assert partitions is not None, f"{job_name} is not partitioned"
    instance = instance or dg.DagsterInstance.get()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    known = set(partitions.get_partition_keys(dynamic_partitions_store=instance))
    missing = [d.isoformat() for d in days if d.isoformat() not in known]
    if missing:
        raise BillingConfigError(
            f"no partition for {missing[0]}: days run from "
            f"{min(known) if known else '?'} to {max(known) if known else '?'} (UTC, up to today)"
        )
    for index, day in enumerate(days, start=1):
        result = execute(
            job_name,
            instance=instance,
            partition_key=day.isoformat(),
            # Step-level events still land in the instance for the UI; the console shows progress.
            run_config={
                **(run_config or {}),
                "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            },
        )
        status = "ok" if result.success else "FAILED"
        if echo is not None:
            echo(f"[{index}/{len(days)}] {job_name} {day}: {status} (run {result.run_id[:8]})")
        yield day, result.success


def run_job(job_name: str, op_config: dict[str, object]) -> dict[str, object]:
    """Run a single-op admin job in-process (recorded on the instance); returns the op's output.

    A failure in the op becomes a BillingConfigError carrying the op's own message, so the
    CLI shows one line instead of Dagster's wrapped stack trace.
    """
    job = code_location().resolve_job_def(job_name)
    (node,) = job.graph.node_names()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        run_config={
            "ops": {node: {"config": op_config}},
            # The failure is reported below in one line; the full trace stays in the run's logs.
            "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
        },
        raise_on_error=False,
    )
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        message = f"{job_name} failed (run {result.run_id[:8]})"
        if failures and failures[0].step_failure_data is not None:
            error = failures[0].step_failure_data.error
            cause = error.cause if error is not None and error.cause is not None else error
            if cause is not None:
                last = cause.message.strip().splitlines()[-1]
                # "package.module.SomeError: what happened" -> "what happened"
                head, _, rest = last.partition(": ")
                text = rest if rest and "." in head and " " not in head else last
                # A Stripe refusal reads as the CLI's one Stripe line: type, message, request.
                stripe_line = stripe_api.describe_failure(cause.cls_name or "", text)
                message += ": " + (stripe_line or text)
        raise BillingConfigError(message)
    output: dict[str, object] = result.output_for_node(node)
    return output


def materialize_asset(asset_key: str) -> bool:
    """Materialize one unpartitioned asset (and its checks) as a run on the instance."""
    job = code_location().resolve_implicit_global_asset_job_def()
    result = execute(
        job.name,
        instance=dg.DagsterInstance.get(),
        asset_selection=[dg.AssetKey(asset_key)],
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    return result.success
