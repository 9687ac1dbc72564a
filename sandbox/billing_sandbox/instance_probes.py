"""Dagster's SQL storages, answering "is this column or table there?" once per storage object.

Dagster 1.13's run and event-log storages ask PostgreSQL's catalog whether a column or table
exists each time they create a run, store an event or read asset records (SQLAlchemy
reflection: a catalog query each, and a connection for some): about a tenth of a simulated
month's wall time, with nothing else learnt. Within a process a column or table, once there,
stays there (migrations only add them), so a True answer is kept on the storage object; a False
one is asked again, so a table created later is still seen. Installed by the simulated month
for its own process and by the test suite for its session; the project's production processes
(daemon, webserver, runs) keep Dagster's behaviour.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from dagster_postgres.event_log.event_log import PostgresEventLogStorage

SEEN_ATTRIBUTE = "_billing_schema_seen"

# The catalog questions, by class: each answer depends only on the storage's schema (and the
# column or table name passed in).
QUESTIONS: dict[type, tuple[str, ...]] = {
    SqlRunStorage: (
        "has_run_stats_index_cols",
        "has_bulk_actions_selector_cols",
        "has_backfill_id_column",
        "has_bulk_action_job_name_column",
        "has_backfill_tags_table",
    ),
    SqlEventLogStorage: ("has_table", "has_asset_key_col", "_has_asset_key_col_on_connection"),
    PostgresEventLogStorage: ("has_table",),
}


def remember_true(question: Callable[..., bool]) -> Callable[..., bool]:
    """`question` asked once per storage object and names, once it has answered True."""
    if getattr(question, "__wrapped__", None) is not None:
        return question  # installed already

    @functools.wraps(question)
    def asked(self: Any, *args: Any) -> bool:
        # The names asked about (a column, a table); a connection argument is not part of it.
        key = (question.__name__, *(a for a in args if isinstance(a, str)))
        seen: set[tuple[str, ...]] = self.__dict__.setdefault(SEEN_ATTRIBUTE, set())
        if key in seen:
            return True
        answer = question(self, *args)
        if answer:
            seen.add(key)
        return answer

    return asked


def install() -> None:
    """Put `remember_true` around Dagster's catalog questions, once per process."""
    for cls, names in QUESTIONS.items():
        for name in names:
            setattr(cls, name, remember_true(cls.__dict__[name]))


def uninstall() -> None:
    """Give Dagster's catalog questions back their own methods (every call asks again)."""
    for cls, names in QUESTIONS.items():
        for name in names:
            inner = getattr(cls.__dict__[name], "__wrapped__", None)
            if inner is not None:
                setattr(cls, name, inner)
