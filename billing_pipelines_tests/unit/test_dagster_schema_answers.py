"""Dagster's schema questions: asked once per storage after a True answer, False asked again."""

from __future__ import annotations

from typing import Any

from billing_sandbox import instance_probes
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from dagster_postgres.event_log.event_log import PostgresEventLogStorage


class Catalog:
    """A storage whose schema the test changes; counts the catalog queries."""

    def __init__(self, columns: set[str]) -> None:
        self.columns = columns
        self.queries = 0

    def has_column(self, conn: Any, name: str) -> bool:
        self.queries += 1
        return name in self.columns

    def has_stats(self) -> bool:
        self.queries += 1
        return "start_time" in self.columns


Catalog.has_column = instance_probes.remember_true(Catalog.has_column)  # type: ignore[method-assign]
Catalog.has_stats = instance_probes.remember_true(Catalog.has_stats)  # type: ignore[method-assign]


def test_a_true_answer_is_kept_per_storage_and_name_and_a_false_one_asked_again() -> None:
    storage, other = Catalog({"backfill_id"}), Catalog({"backfill_id"})
    assert storage.has_column(object(), "backfill_id")
    assert storage.has_column(object(), "backfill_id")  # another connection, same question
    assert storage.queries == 1
    assert not storage.has_column(object(), "job_name")
    storage.columns.add("job_name")  # a migration adds it while the process runs
    assert storage.has_column(object(), "job_name")
    assert storage.queries == 3
    assert other.has_column(object(), "backfill_id") and other.queries == 1  # its own answers
    assert not storage.has_stats()
    storage.columns.add("start_time")
    assert storage.has_stats() and storage.has_stats()
    assert storage.queries == 5


def test_the_suite_installs_it_on_dagsters_storages_once() -> None:
    # The suite's conftest installed it at start-up; installing again wraps nothing twice.
    instance_probes.install()
    for cls, names in instance_probes.QUESTIONS.items():
        for name in names:
            method = cls.__dict__[name]
            inner = method.__wrapped__
            assert getattr(inner, "__wrapped__", None) is None, (cls.__name__, name)
    assert {SqlRunStorage, SqlEventLogStorage, PostgresEventLogStorage} == set(
        instance_probes.QUESTIONS
    )
