"""Alembic environment: runs the billing schema migrations on the connection it is handed."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

VERSION_TABLE = "billing_schema_version"
# Any fixed 64-bit number: serialises concurrent start-ups so two processes never migrate at once.
MIGRATION_LOCK_ID = 7_301_120_415


def run_migrations_online() -> None:
    """Apply pending migrations under a session advisory lock."""
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set by billing_pipelines.lib.pg.migrations"
    engine = create_engine(url, future=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()
        try:
            applied: list[str] = config.attributes.setdefault("applied", [])
            context.configure(
                connection=connection,
                version_table=VERSION_TABLE,
                transaction_per_migration=True,
                # Record what this process applied while it holds the lock: another process
                # may have done the work while we waited.
                on_version_apply=lambda *, step, **_: applied.append(step.up_revision_id),
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()
    engine.dispose()


run_migrations_online()
