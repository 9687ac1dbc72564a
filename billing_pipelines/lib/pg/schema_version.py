"""Whether the billing database already has the newest shipped schema, without loading Alembic.

Every run opens the billing database and must not work on an old schema. Asking Alembic costs
each fresh run process its migration scripts, an engine, an advisory lock and a few round trips
(tens to hundreds of milliseconds); one query against the version table answers the common case,
and Alembic runs only when the answer is not "at the shipped head".
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from billing_pipelines.lib.errors import (
    ServiceUnavailableError,
    describe_connection_error,
    redact_url,
)

VERSION_TABLE = "billing_schema_version"
VERSIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations" / "versions"


def _revision_ids(source: str) -> tuple[str | None, tuple[str, ...]]:
    """A migration script's `revision` and its `down_revision`s, read without running it."""
    revision: str | None = None
    down: tuple[str, ...] = ()
    for node in ast.parse(source).body:
        targets: list[ast.expr]
        if isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = list(node.targets), node.value
        else:
            continue
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        if value is None or not names & {"revision", "down_revision"}:
            continue
        literal = ast.literal_eval(value)
        if "revision" in names:
            revision = str(literal)
        if "down_revision" in names:
            if literal is None:
                down = ()
            elif isinstance(literal, str):
                down = (literal,)
            else:
                down = tuple(str(r) for r in literal)
    return revision, down


@functools.cache
def shipped_head(directory: Path = VERSIONS_DIR) -> str:
    """The one revision no other shipped migration builds on (Alembic's single head)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in sorted(directory.glob("*.py")):
        revision, down = _revision_ids(script.read_text())
        if revision is not None:
            revisions.add(revision)
            parents.update(down)
    heads = revisions - parents
    if len(heads) != 1:
        raise ValueError(f"{directory}: expected one migration head, found {sorted(heads)}")
    return heads.pop()


def database_revisions(url: str, timeout: float = 5.0) -> set[str]:
    """The revisions the database's version table records (empty for a new database).

    Also the reachability check: an unreachable server is one line naming DATABASE_URL.
    """
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))) as conn:
            try:
                rows = conn.execute(
                    sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(VERSION_TABLE))
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                return set()
            return {str(row[0]) for row in rows}
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"DATABASE_URL: cannot connect to {redact_url(url)} ({describe_connection_error(exc)})"
        ) from None


def at_shipped_head(url: str) -> bool:
    """True when the database is exactly at the newest shipped migration (nothing to apply)."""
    return database_revisions(url) == {shipped_head()}
