"""Runs Dagster jobs in-process on the configured instance, so the UI shows every CLI run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

import dagster as dg

from billing_pipelines.lib.errors import BillingConfigError
from billing_pipelines.lib.stripe import client as stripe_api


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
        result = job.execute_in_process(
            instance=instance,
            partition_key=day.isoformat(),
            raise_on_error=False,
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
    result = job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        asset_selection=[dg.AssetKey(asset_key)],
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    return result.success
