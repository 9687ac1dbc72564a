"""Runs Dagster jobs in-process on the configured instance, so the UI shows every CLI run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta

import dagster as dg

from billing_pipelines.lib.errors import BillingConfigError


def materialize_days(
    job_name: str, first: date, last: date, echo: Callable[[str], object] = print
) -> Iterator[tuple[date, bool]]:
    """Run a daily-partitioned job for each day from first to last, reporting progress."""
    from billing_pipelines.definitions import defs

    definitions = defs()
    job = definitions.resolve_job_def(job_name)
    partitions = job.partitions_def
    assert partitions is not None, f"{job_name} is not partitioned"
    instance = dg.DagsterInstance.get()
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
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        status = "ok" if result.success else "FAILED"
        echo(f"[{index}/{len(days)}] {job_name} {day}: {status} (run {result.run_id[:8]})")
        yield day, result.success
