"""Starts, stops and reports the embedded services (Postgres, warehouse bridge, Stripe sandbox).

One folder (BILLING_HOME) holds their data, logs and a `sandbox.env` file with the addresses
every other process connects to. The CLI, the Makefile and the test fixtures all use this.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from billing_pipelines import sandbox_mode
from billing_pipelines.lib.pg import migrations
from billing_pipelines.lib.private_files import private_dir, write_private
from billing_sandbox import postgres
from billing_sandbox.ports import free_port as free_port  # reserved across processes

STATE_FILE = "sandbox.json"
ENV_FILE = "sandbox.env"
# A well-formed test-mode key for the local Stripe sandbox; it grants nothing anywhere else.
SANDBOX_STRIPE_KEY = "sk_test_billing_pipelines_sandbox"
HOST = "127.0.0.1"
# Where `billing ui` serves the Dagster UI by default: alert links point here.
DEFAULT_UI_URL = f"http://{HOST}:3000"


@dataclass
class ServiceState:
    """What `billing sandbox up` started and where it listens."""

    postgres_port: int = 0
    clickhouse_port: int = 0
    clickhouse_pid: int | None = None
    stripe_port: int = 0
    stripe_pid: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _load_state(home: Path) -> ServiceState:
    path = home / STATE_FILE
    if not path.exists():
        return ServiceState()
    return ServiceState(**json.loads(path.read_text()))


def _save_state(home: Path, state: ServiceState) -> None:
    (home / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return True


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when something answers HTTP there (a 4xx still proves the server is up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 500
    except urllib.error.HTTPError as exc:
        return int(exc.code) < 500
    except OSError:
        return False


def _spawn(home: Path, name: str, args: list[str]) -> int:
    log = (home / "logs").joinpath(f"{name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "billing_pipelines.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the command that started it
        )
    return process.pid


def _wait_http(url: str, pid: int, name: str, home: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not _http_ok(url):
        if not _pid_alive(pid):
            log = (home / "logs" / f"{name}.log").read_text()[-2000:]
            raise RuntimeError(f"the {name} service exited during start-up:\n{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {name} service did not answer {url} within {timeout:.0f}s")
        time.sleep(0.1)


def stripe_sandbox_available() -> bool:
    """True when the Stripe emulator package is part of this checkout."""
    try:
        from billing_sandbox import stripe as stripe_sandbox
    except ImportError:
        return False
    return hasattr(stripe_sandbox, "serve")


def up(
    home: Path,
    *,
    with_postgres: bool = True,
    with_clickhouse: bool = True,
    with_stripe: bool = True,
) -> dict[str, str]:
    """Start whatever is not running yet, apply migrations, write sandbox.env; returns its vars."""
    # Test data only: a live Stripe key in this process's environment stops everything here.
    sandbox_mode.refuse_live_key()
    private_dir(home)
    state = _load_state(home)
    env = {"DAGSTER_HOME": str(_dagster_home(home))}

    if with_postgres:
        state.postgres_port = state.postgres_port or free_port()
        admin_url = postgres.start(home / "postgres", state.postgres_port, HOST)
        if os.geteuid() == 0:
            # As root the server runs as an unprivileged user, and the wheel opens every parent
            # folder to others so it can reach its data: keep traversal, not listing or reading.
            home.chmod(0o711)
        urls = postgres.ensure_databases(admin_url)
        migrations.upgrade_to_head(urls["billing"])
        env["DATABASE_URL"] = urls["billing"]
        env["DAGSTER_POSTGRES_URL"] = urls["dagster"]

    if with_clickhouse:
        state.clickhouse_port = state.clickhouse_port or free_port()
        clickhouse_ping = f"http://{HOST}:{state.clickhouse_port}/ping"
        if not (_pid_alive(state.clickhouse_pid) and _http_ok(clickhouse_ping)):
            data = str(home / "chdb")
            state.clickhouse_pid = _spawn(
                home,
                "clickhouse",
                ["sandbox", "clickhouse", "--data", data, "--port", str(state.clickhouse_port)],
            )
            _save_state(home, state)
            _wait_http(clickhouse_ping, state.clickhouse_pid, "clickhouse", home)
        env["CLICKHOUSE_URL"] = f"http://default@{HOST}:{state.clickhouse_port}/default"
        # As PostgreSQL gets its migrations: the usage tables exist before anything reads them
        # (a cancellation's final count in a sandbox that has never seen usage, for one).
        from billing_pipelines.lib.usage import warehouse

        warehouse.ensure_usage_schema(warehouse.connect(env["CLICKHOUSE_URL"]))

    if with_stripe and stripe_sandbox_available():
        state.stripe_port = state.stripe_port or free_port()
        stripe_base = f"http://{HOST}:{state.stripe_port}"
        if not (_pid_alive(state.stripe_pid) and _http_ok(f"{stripe_base}/healthz")):
            state.stripe_pid = _spawn(
                home, "stripe", ["sandbox", "stripe", "--port", str(state.stripe_port)]
            )
            _save_state(home, state)
            _wait_http(f"{stripe_base}/healthz", state.stripe_pid, "stripe", home)
        env["STRIPE_API_BASE"] = stripe_base
        env["STRIPE_API_KEY"] = SANDBOX_STRIPE_KEY

    env["DAGSTER_UI_URL"] = DEFAULT_UI_URL
    # What the demo recorded (its business clock, its first usage day) outlives a restart.
    env.update(state.extra)
    _save_state(home, state)
    _write_env(home, env)
    return env


def _write_env(home: Path, env: dict[str, str]) -> None:
    lines = ["# Written by `billing sandbox up`: addresses of the embedded services."]
    lines += [f"{key}={value}" for key, value in env.items()]
    write_private(home / ENV_FILE, ("\n".join(lines) + "\n").encode())


def remember(home: Path, values: dict[str, str]) -> None:
    """Add settings to sandbox.env (and keep them across `up`), e.g. the demo's clock."""
    state = _load_state(home)
    state.extra.update(values)
    _save_state(home, state)
    path = home / ENV_FILE
    env = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                env[key] = value
    _write_env(home, {**env, **values})


# The sandbox's runs capture their steps' output into the files the UI shows without echoing
# it to the terminal: Dagster's own manager starts four processes per run for the echo, and the
# simulated month and the tests run most runs in one process (see billing_sandbox.compute_logs).
SANDBOX_COMPUTE_LOGS = """
# Added by the sandbox (development only): step output to files, no echo to the terminal.
compute_logs:
  module: billing_sandbox.compute_logs
  class: FileComputeLogManager
  config:
    base_dir: {storage}
"""


def _dagster_home(home: Path) -> Path:
    """DAGSTER_HOME with the project's dagster.yaml (Postgres storage from the environment)."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).resolve().parents[2] / "dagster.yaml"
    target = dagster_home / "dagster.yaml"
    if source.exists():
        # Where Dagster's own manager keeps them: DAGSTER_HOME's storage folder.
        logs = SANDBOX_COMPUTE_LOGS.format(storage=json.dumps(str(dagster_home / "storage")))
        target.write_text(source.read_text() + logs)
    return dagster_home


def down(home: Path) -> list[str]:
    """Stop every embedded service under this folder; returns what was stopped."""
    state = _load_state(home)
    stopped = []
    for name, pid in (("stripe", state.stripe_pid), ("clickhouse", state.clickhouse_pid)):
        if _pid_alive(pid):
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
    state.stripe_pid = state.clickhouse_pid = None
    if postgres.is_running(home / "postgres"):
        postgres.stop(home / "postgres")
        stopped.append("postgres")
    if (home / STATE_FILE).exists():
        _save_state(home, state)
    (home / ENV_FILE).unlink(missing_ok=True)
    return stopped


def status(home: Path) -> dict[str, str]:
    """Each service's state and address, for `billing sandbox status`."""
    state = _load_state(home)
    report = {}
    pg_up = postgres.is_running(home / "postgres")
    report["postgres"] = (
        f"running  postgresql://postgres@{HOST}:{state.postgres_port}/billing"
        if pg_up
        else "stopped"
    )
    ch_up = _pid_alive(state.clickhouse_pid) and _http_ok(
        f"http://{HOST}:{state.clickhouse_port}/ping"
    )
    report["clickhouse"] = (
        f"running  http://{HOST}:{state.clickhouse_port} (chDB bridge, pid {state.clickhouse_pid})"
        if ch_up
        else "stopped"
    )
    st_up = _pid_alive(state.stripe_pid) and _http_ok(f"http://{HOST}:{state.stripe_port}/healthz")
    report["stripe"] = (
        f"running  http://{HOST}:{state.stripe_port} (Stripe sandbox, pid {state.stripe_pid})"
        if st_up
        else "stopped"
    )
    return report
