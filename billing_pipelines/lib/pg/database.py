"""Pooled connections to the billing PostgreSQL database, with clear errors when it is down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from billing_pipelines.lib.errors import (
    ServiceUnavailableError,
    describe_connection_error,
    redact_url,
)


def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 5, timeout: float = 10.0
) -> ConnectionPool:
    """Open a small pool and prove one connection works, or say which server is unreachable."""

    def check(conn: psycopg.Connection[Any]) -> None:
        # Reconnect transparently after a database restart instead of handing out dead sockets.
        # One dead connection means every idle one is dead: test them all at once, or the pool
        # backs off about 1, 2, 4 s per dead socket before it hands out a new connection.
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error:
            pool.check()
            raise

    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        check=check,
        kwargs={"row_factory": dict_row, "connect_timeout": max(1, int(timeout))},
    )
    try:
        pool.open(wait=True, timeout=timeout)
    except (PoolTimeout, psycopg.OperationalError) as exc:
        pool.close()
        raise ServiceUnavailableError(
            f"DATABASE_URL: cannot connect to {redact_url(url)} ({describe_connection_error(exc)})"
        ) from None
    return pool


@contextmanager
def transaction(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """One connection in one transaction: committed on success, rolled back on error."""
    with pool.connection() as conn, conn.transaction():
        yield conn


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise ServiceUnavailableError naming DATABASE_URL when the server cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout))):
            return
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"DATABASE_URL: cannot connect to {redact_url(url)} ({describe_connection_error(exc)})"
        ) from None
