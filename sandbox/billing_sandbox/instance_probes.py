"""The month's Dagster instance answers its storages' schema probes once, not on every call.

Dagster's SQL run and event log storages ask the database which columns their tables have
(SQLAlchemy reflection: several catalog queries) on most reads and writes, so that an instance
not yet migrated keeps working: storing a run event, reading a run record or an asset record
each reflects a table again. The month owns its instance from start to end and no migration
runs meanwhile, so the answers cannot change: the first one is kept for the month. (A
long-lived webserver or daemon pays the same probes; this is the month's own instance only.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

# Probes of the run storage that take no argument and reflect the runs or bulk actions table.
RUN_STORAGE_PROBES = (
    "has_run_stats_index_cols",
    "has_backfill_id_column",
    "has_bulk_actions_selector_cols",
    "has_bulk_action_job_name_column",
)
# Probes of the event log storage, by the table or column they ask about.
EVENT_STORAGE_PROBES = ("has_asset_key_col", "has_table")
# The asset-key column probe made on the caller's connection (inside a transaction).
EVENT_STORAGE_CONNECTION_PROBE = "_has_asset_key_col_on_connection"


def _remembered(probe: Callable[..., bool]) -> Callable[..., bool]:
    answers: dict[tuple[Any, ...], bool] = {}

    def ask(*args: Any) -> bool:
        if args not in answers:
            answers[args] = probe(*args)
        return answers[args]

    return ask


def _remembered_on_connection(probe: Callable[[Any, str], bool]) -> Callable[[Any, str], bool]:
    """The same for a probe made on the caller's connection: the answer is the column's."""
    answers: dict[str, bool] = {}

    def ask(conn: Any, column_name: str) -> bool:
        if column_name not in answers:
            answers[column_name] = probe(conn, column_name)
        return answers[column_name]

    return ask


def remember_schema_probes(instance: dg.DagsterInstance) -> list[str]:
    """Keep each schema probe's first answer on this instance's storages; returns the probes."""
    kept: list[str] = []
    for storage, names in (
        (instance.run_storage, RUN_STORAGE_PROBES),
        (instance.event_log_storage, EVENT_STORAGE_PROBES),
    ):
        for name in names:
            probe = getattr(storage, name, None)
            if callable(probe):
                setattr(storage, name, _remembered(probe))
                kept.append(f"{type(storage).__name__}.{name}")
    storage = instance.event_log_storage
    on_connection = getattr(storage, EVENT_STORAGE_CONNECTION_PROBE, None)
    if callable(on_connection):
        setattr(storage, EVENT_STORAGE_CONNECTION_PROBE, _remembered_on_connection(on_connection))
        kept.append(f"{type(storage).__name__}.{EVENT_STORAGE_CONNECTION_PROBE}")
    return kept
