"""The usage warehouse's migrations: the ClickHouse DDL the project owns, applied once, in order.

The SaaS owns `usage_events`; billing only adds what its reads need. Each migration is a list
of idempotent statements recorded by id in `billing_warehouse_migrations`, so a warehouse that
already has a step (or a second process racing this one) is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from billing_pipelines.lib.usage.tables import (
    USAGE_BY_DAY_PROJECTION,
    USAGE_BY_DAY_PROJECTION_DDL,
    USAGE_COUNTS_BY_DAY_PROJECTION,
    USAGE_COUNTS_BY_DAY_PROJECTION_DDL,
    USAGE_EVENTS_DDL,
    USAGE_IDS_BY_DAY_BACKFILL,
    USAGE_IDS_BY_DAY_DDL,
    USAGE_IDS_BY_DAY_VIEW_DDL,
)

if TYPE_CHECKING:  # the definitions import this module; only a warehouse client needs the driver
    from clickhouse_connect.driver.client import Client

MIGRATIONS_TABLE = "billing_warehouse_migrations"

MIGRATIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    id         String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY id
"""

APPLIED_SQL = "SELECT id FROM billing_warehouse_migrations"


@dataclass(frozen=True)
class WarehouseMigration:
    """One named step of warehouse DDL; every statement is safe to run twice."""

    id: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[WarehouseMigration, ...] = (
    WarehouseMigration("0001_usage_events", (USAGE_EVENTS_DDL,)),
    # Daily usage reads one day (plus a day of look-back) of a month-partitioned table ordered
    # by tenant: without a day-first copy every day's query reads the whole month. The
    # projection is kept by the engine on every insert and merge, so it holds exactly the rows
    # of the table (duplicates and late events included). MATERIALIZE builds it for parts
    # written before it existed; it runs in the background on a large table, and until it has
    # finished the engine reads those parts from the table itself, so results never change.
    WarehouseMigration(
        "0002_usage_by_day_projection",
        (
            USAGE_BY_DAY_PROJECTION_DDL,
            f"ALTER TABLE usage_events MATERIALIZE PROJECTION {USAGE_BY_DAY_PROJECTION}",
        ),
    ),
    # Daily usage's look-back re-read and re-grouped the day before from raw events: about half
    # its cost. The daily id table (kept by a materialized view at insert) holds one small row
    # per day, tenant and query id, so the look-back is a set of the day before's hashes; the
    # raw counts come from an aggregate projection. The view is created before the backfill
    # copies the table, so an insert racing the migration is in the view, the copy or both, and
    # both is harmless (every column merges by max). A migration interrupted half way is run
    # again whole: the same property makes a second copy harmless too.
    WarehouseMigration(
        "0003_usage_ids_by_day",
        (
            USAGE_IDS_BY_DAY_DDL,
            USAGE_IDS_BY_DAY_VIEW_DDL,
            USAGE_IDS_BY_DAY_BACKFILL,
            USAGE_COUNTS_BY_DAY_PROJECTION_DDL,
            f"ALTER TABLE usage_events MATERIALIZE PROJECTION {USAGE_COUNTS_BY_DAY_PROJECTION}",
        ),
    ),
)


def applied_migrations(client: Client) -> set[str]:
    """Ids of the migrations this warehouse has recorded."""
    client.command(MIGRATIONS_DDL)
    rows = client.query(APPLIED_SQL).result_rows
    return {str(row[0]) for row in rows}


def migrate_warehouse(client: Client) -> list[str]:
    """Apply the pending migrations in order and return their ids."""
    done = applied_migrations(client)
    applied = []
    for migration in MIGRATIONS:
        if migration.id in done:
            continue
        for statement in migration.statements:
            client.command(statement)
        client.insert(MIGRATIONS_TABLE, [[migration.id]], column_names=["id"])
        applied.append(migration.id)
    return applied
