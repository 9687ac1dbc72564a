"""The cheap "already at the shipped schema?" check every run does before touching the database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from alembic import command
from psycopg import sql

from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.errors import ServiceUnavailableError
from billing_pipelines.lib.pg import migrations, schema_version


@pytest.fixture
def empty_database(embedded_services: dict[str, str]) -> Iterator[str]:
    """A brand-new database on the embedded server, dropped afterwards."""
    admin = embedded_services["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    name = f"schema_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_shipped_head_is_the_one_alembic_finds() -> None:
    assert schema_version.shipped_head() == migrations.head_revision()


def test_a_new_database_is_not_at_head_until_migrated(empty_database: str) -> None:
    assert schema_version.database_revisions(empty_database) == set()
    assert not schema_version.at_shipped_head(empty_database)
    migrations.upgrade_to_head(empty_database)
    assert schema_version.database_revisions(empty_database) == {migrations.head_revision()}
    assert schema_version.at_shipped_head(empty_database)


def test_a_database_behind_or_ahead_of_the_code_is_not_at_head(empty_database: str) -> None:
    migrations.upgrade_to_head(empty_database)
    config = migrations.alembic_config(empty_database)
    command.stamp(config, "0003")  # an older schema, as after restoring an old backup
    assert schema_version.database_revisions(empty_database) == {"0003"}
    assert not schema_version.at_shipped_head(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("UPDATE billing_schema_version SET version_num = '9999'")  # newer code ran
    assert not schema_version.at_shipped_head(empty_database)


def test_an_unreachable_server_is_one_line_naming_database_url() -> None:
    with pytest.raises(ServiceUnavailableError, match="^DATABASE_URL: cannot connect to"):
        schema_version.database_revisions("postgresql://u:secret@127.0.0.1:1/billing", timeout=1)


# Opens the billing database resource in a fresh process, as a run does, and reports whether
# the module that runs Alembic was loaded (Dagster's own storage imports Alembic itself, so the
# library's presence says nothing) and which revision the database is at afterwards.
CHILD = """
import json, sys
import dagster as dg
from billing_pipelines.defs.resources import BillingDatabase
from billing_pipelines.lib.pg import schema_version
db = BillingDatabase(url=sys.argv[1])
with dg.build_init_resource_context() as context:
    db.setup_for_execution(context)
    db.teardown_after_execution(context)
print(json.dumps({"migrator": "billing_pipelines.lib.pg.migrations" in sys.modules,
                  "revisions": sorted(schema_version.database_revisions(sys.argv[1]))}))
"""


def _open_in_fresh_process(url: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_run_on_an_up_to_date_database_does_not_run_alembic(fresh_database_url: str) -> None:
    result = _open_in_fresh_process(fresh_database_url)
    assert result == {"migrator": False, "revisions": [migrations.head_revision()]}


def test_a_run_on_a_new_database_still_migrates_it(empty_database: str) -> None:
    result = _open_in_fresh_process(empty_database)
    assert result == {"migrator": True, "revisions": [migrations.head_revision()]}


def test_the_resource_still_refuses_an_unreachable_database() -> None:
    db = BillingDatabase(url="postgresql://u:secret@127.0.0.1:1/billing")
    with dg.build_init_resource_context() as context, pytest.raises(ServiceUnavailableError):
        db.setup_for_execution(context)
