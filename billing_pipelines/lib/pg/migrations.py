"""Applies the billing database's versioned schema (Alembic), idempotently and under a lock."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

import billing_pipelines.db.migrations as migrations_pkg
from billing_pipelines.lib.pg.schema_version import VERSION_TABLE

MIGRATIONS_DIR = Path(migrations_pkg.__file__).parent


def _sqlalchemy_url(database_url: str) -> str:
    # SQLAlchemy picks the driver from the scheme; we use psycopg 3 everywhere.
    scheme, rest = database_url.split("://", 1)
    return f"postgresql+psycopg://{rest}"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser treats % as interpolation: escape it for passwords that contain one.
    config.set_main_option("sqlalchemy.url", _sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> list[str]:
    """Apply every pending migration; returns the revisions that were applied (empty if none)."""
    config = alembic_config(database_url)
    config.attributes["applied"] = []
    command.upgrade(config, "head")
    return list(config.attributes["applied"])


def current_revision(database_url: str) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    engine = create_engine(_sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()
