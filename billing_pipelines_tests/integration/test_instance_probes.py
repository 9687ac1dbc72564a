"""Dagster's storages reflect their schema once per storage, not on every run (month and suite)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pytest
import sqlalchemy
from billing_sandbox import instance_probes


@dg.op
def step() -> int:
    """One step with an output, so a run stores the usual run and step events."""
    return 1


@dg.job
def probe_job() -> None:
    """A one-step job."""
    step()


@contextmanager
def catalog_queries() -> Iterator[list[str]]:
    """Every statement that reads PostgreSQL's catalog (what reflection sends), while open."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "pg_catalog" in statement or "information_schema" in statement:
            seen.append(statement)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", record)


def _three_runs(instance: dg.DagsterInstance) -> None:
    for _ in range(3):
        result = probe_job.execute_in_process(instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None
        instance.get_asset_records()


@pytest.mark.parametrize("remembered", [False, True])
def test_runs_reflect_the_schema_only_on_the_first_probe(
    embedded_services: dict[str, str], remembered: bool
) -> None:
    # The suite installs the remembered answers for its whole session (as the month does for
    # its process): the case without them takes Dagster's own methods back for its duration.
    if not remembered:
        instance_probes.uninstall()
    try:
        storage = {"postgres": {"postgres_url": embedded_services["DAGSTER_POSTGRES_URL"]}}
        with dg.instance_for_test(overrides={"storage": storage}) as instance:
            before = {
                "stats": instance.run_storage.has_run_stats_index_cols(),  # type: ignore[attr-defined]
                "status_cache": instance.event_log_storage.can_read_asset_status_cache(),
            }
            _three_runs(instance)  # the first answers (kept, when remembered)
            with catalog_queries() as seen:
                _three_runs(instance)
            # The answers themselves do not change: a migrated instance has every column.
            assert instance.run_storage.has_run_stats_index_cols() == before["stats"]  # type: ignore[attr-defined]
            assert (
                instance.event_log_storage.can_read_asset_status_cache() == before["status_cache"]
            )
    finally:
        instance_probes.install()
    if remembered:
        assert seen == []
    else:
        assert len(seen) >= 6  # Dagster reflects again on every run: what the month avoids
