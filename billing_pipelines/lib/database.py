"""Pooled connections to the billing PostgreSQL database, with clear errors when it is down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        # Reconnect transparently after a database restart instead of handing out dead sockets.
        check=ConnectionPool.check_connection,
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
