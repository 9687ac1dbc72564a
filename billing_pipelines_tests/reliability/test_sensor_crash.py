"""The sensor daemon killed (SIGKILL) right after it created a run, and right after it launched
one: exactly one run per queue row, and each row's effect applied once.

Approach: Dagster's own crash points. The daemon's sensor iteration
(`dagster._daemon.sensor.execute_sensor_iteration`, the body of `dagster-daemon run`'s sensor
loop) takes `debug_crash_flags`; with `{sensor: {"RUN_CREATED": SIGKILL}}` it kills its own
process right after `instance.create_run`, with `"RUN_LAUNCHED"` right after
`instance.submit_run` (Dagster's sensor-recovery tests use the same hooks). Each tick runs in a
fresh Python process on a real Postgres `DagsterInstance` (dagster-postgres, as
dagster.yaml), so the kill is a real `kill -9` of a daemon at an exact point, and the
next process resumes as a restarted daemon would: the interrupted tick, its stored run
requests and the sensor's cursor as they were left in storage. Killing `dagster-daemon` from
outside cannot hit "between create and launch" reliably (milliseconds apart), so we do not.

Two instance set-ups:
- dagster.yaml as shipped (QueuedRunCoordinator): proves the run-level dedup exactly as
  production runs it (a launched run is QUEUED), without executing runs.
- the same Postgres storage with Dagster's SyncInMemoryRunLauncher: a launch executes the run
  inside the daemon process, so the test also sees each queue row's effect (and needs no code
  server); it is the only difference from production.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml
from psycopg import sql

from billing_pipelines.defs.resources import BillingDatabase, StripeResource
from billing_pipelines.defs.webhooks.jobs import webhook_events_job
from billing_pipelines.defs.webhooks.sensors import BATCH_SIZE
from billing_pipelines_tests.support import API_KEY
from billing_pipelines_tests.webhook_harness import (  # noqa: F401 - fixtures
    Harness,
    billing_db_url,
    harness,
    query,
    smtp_server,
)

ROOT = Path(__file__).resolve().parents[2]
LOCATION = "billing_pipelines.definitions"
SENSOR = "webhook_events_sensor"
RUN_KEY_TAG = "dagster/run_key"


# ---- daemon ticks in their own process ---------------------------------------------------------

# Run with `python -c` in a fresh process (it imports only Dagster; the code location is loaded
# in-process, as `dagster dev` does, so no code server outlives a killed daemon). Arguments:
# sensor name, crash point or null, number of iterations. The other sensors are stopped in the
# instance, so only the sensor under test ticks. Between iterations it waits out the sensor's
# minimum interval, as the daemon's loop does.
DAEMON = """
import json, logging, signal, sys, time
import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

sensor_name, crash_point, iterations, location_name, root = json.loads(sys.argv[1])
target = InProcessWorkspaceLoadTarget(
    InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable, module_name=location_name, working_directory=root
        ),
        location_name=location_name,
    )
)
with dg.DagsterInstance.get() as instance, create_test_daemon_workspace_context(
    target, instance
) as context:
    location = context.create_request_context().get_code_location(location_name)
    (repo,) = location.get_repositories().values()
    for sensor in repo.get_sensors():
        if sensor.name != sensor_name:
            instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
    flags = {sensor_name: {crash_point: signal.SIGKILL}} if crash_point else None
    for i in range(iterations):
        if i:
            time.sleep(repo.get_sensor(sensor_name).min_interval_seconds + 0.5)
        list(execute_sensor_iteration(context, logging.getLogger("daemon"), None, None,
                                      debug_crash_flags=flags))
"""


def run_daemon(env: dict[str, str], crash_point: str | None = None, iterations: int = 1) -> int:
    """Sensor-loop iterations in a fresh process; returns its exit code (-9 when killed)."""
    args = json.dumps([SENSOR, crash_point, iterations, LOCATION, str(ROOT)])
    done = subprocess.run(
        [sys.executable, "-c", DAEMON, args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=600,
    )
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr.decode()[-4000:])
    return done.returncode


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def dagster_storage(embedded_services: dict[str, str]) -> Iterator[str]:
    """A fresh Postgres database for Dagster's runs, event logs and sensor ticks."""
    base = embedded_services["DAGSTER_POSTGRES_URL"]
    admin = base.rsplit("/", 1)[0] + "/postgres"
    name = f"dagster_crash_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def dagster_home(tmp_path: Path, launcher: str) -> Path:
    """DAGSTER_HOME with dagster.yaml, as shipped ("deploy") or launching runs
    synchronously in the daemon's process ("sync")."""
    home = tmp_path / f"dagster_home_{launcher}"
    home.mkdir()
    if launcher == "deploy":
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        return home
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    config.pop("concurrency", None)  # run queue settings: there is no queue here
    config["run_coordinator"] = {
        "module": "dagster._core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
    config["run_launcher"] = {
        "module": "dagster._core.launcher.sync_in_memory_run_launcher",
        "class": "SyncInMemoryRunLauncher",
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def daemon_env(h: Harness, storage: str, home: Path) -> dict[str, str]:
    """The daemon's environment: the per-test billing database, sandbox and Dagster storage."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": storage,
        "DATABASE_URL": h.db_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": h.sandbox.url,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "SMTP_URL": h.smtp.url,
    }
    env.pop("ALERT_EMAIL", None)
    return env


def queue_rows(h: Harness, tenants: int) -> list[int]:
    """Stripe events of `tenants` new Pro tenants, delivered and stored: the queue rows."""
    h.tenant("crash-0")  # also creates the catalog
    (base,) = h.client.v1.prices.list({"lookup_keys": ["pro_base"]}).data
    for i in range(1, tenants):
        tenant_id = f"crash-{i}"
        customer = h.client.v1.customers.create(
            {"email": f"{tenant_id}@tenant.example", "metadata": {"tenant_id": tenant_id}}
        )
        pm = h.client.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
        h.client.v1.customers.update(
            customer.id, {"invoice_settings": {"default_payment_method": pm.id}}
        )
        query(
            h.db_url,
            "INSERT INTO tenants (tenant_id, name, email, plan, stripe_customer_id) "
            "VALUES (%s, %s, %s, 'pro', %s)",
            (tenant_id, tenant_id, f"{tenant_id}@tenant.example", customer.id),
        )
        h.client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": base.id}]})
    h.drain()
    rows = query(h.db_url, "SELECT id, status FROM webhook_events ORDER BY id")
    assert rows and {r["status"] for r in rows} == {"pending"}
    return [r["id"] for r in rows]


def sensor_runs(storage: str) -> list[dict[str, Any]]:
    """Every run the webhook sensor created: id, status, run_key and the rows it names."""
    runs = query(
        storage,
        "SELECT r.run_id, r.status, r.run_body, t.value AS run_key FROM runs r "
        "JOIN run_tags t ON t.run_id = r.run_id AND t.key = %s "
        "WHERE r.pipeline_name = 'webhook_events_job' ORDER BY r.id",
        (RUN_KEY_TAG,),
    )
    for run in runs:
        body = json.loads(run.pop("run_body"))
        config = body["run_config"]["ops"]["process_webhook_events"]["config"]
        run["row_ids"] = config["row_ids"]
    return runs


def last_tick(storage: str) -> str:
    """Status of the webhook sensor's newest tick."""
    (row,) = query(storage, "SELECT status FROM job_ticks ORDER BY id DESC LIMIT 1")
    return str(row["status"])


# ---- the crashes -------------------------------------------------------------------------------


@pytest.mark.slow  # ~6 Python processes each loading the code location: 40-90 s
@pytest.mark.timeout(600)
@pytest.mark.parametrize("launcher", ["sync", "deploy"])
def test_daemon_killed_after_creating_then_after_launching_a_run_leaves_one_run_per_row(
    harness: Harness,  # noqa: F811 - the imported fixture
    dagster_storage: str,
    tmp_path: Path,
    launcher: str,
) -> None:
    """kill -9 right after create_run, restart, kill -9 right after submit_run, restart: one
    run per batch of queue rows; with runs executed ("sync"), each row handled exactly once."""
    # Enough tenants' events for two batches: a crash leaves the second request unsubmitted.
    rows = queue_rows(harness, tenants=BATCH_SIZE // 8 + 2)
    assert len(rows) > BATCH_SIZE
    env = daemon_env(harness, dagster_storage, dagster_home(tmp_path, launcher))
    launched = "SUCCESS" if launcher == "sync" else "QUEUED"

    # 1. Killed right after creating the first run: it exists, never launched.
    assert run_daemon(env, "RUN_CREATED") == -signal.SIGKILL
    (first,) = sensor_runs(dagster_storage)
    assert first["status"] == "NOT_STARTED"
    assert last_tick(dagster_storage) == "STARTED"  # interrupted: cursor not advanced

    # 2. The restarted daemon resumes the tick, launches that same run, and is killed right
    #    after launching it (before the tick records it).
    assert run_daemon(env, "RUN_LAUNCHED") == -signal.SIGKILL
    (again,) = sensor_runs(dagster_storage)
    assert (again["run_id"], again["status"]) == (first["run_id"], launched)
    assert last_tick(dagster_storage) == "STARTED"

    # 3. Restarted again: the launched run is not launched twice, the second batch gets its
    #    run, and a fresh evaluation afterwards asks for nothing more.
    assert run_daemon(env, iterations=2) == 0
    runs = sensor_runs(dagster_storage)
    assert [r["status"] for r in runs] == [launched, launched]
    assert runs[0]["run_id"] == first["run_id"]
    assert len({r["run_key"] for r in runs}) == 2
    named = Counter(row for r in runs for row in r["row_ids"])
    assert sorted(named) == rows and set(named.values()) == {1}  # one run per queue row

    handled = query(
        harness.db_url, "SELECT id, status, attempts, claimed_by FROM webhook_events ORDER BY id"
    )
    if launcher == "deploy":
        # Queued for the run queue daemon: dispatched (not offered again), not yet touched.
        assert {(r["status"], r["attempts"]) for r in handled} == {("pending", 0)}
        return
    assert {r["status"] for r in handled} <= {"processed", "ignored"}
    assert [r["attempts"] for r in handled] == [1] * len(rows)  # each effect applied once
    owner = {row: r["run_id"] for r in runs for row in r["row_ids"]}
    assert {r["id"]: r["claimed_by"] for r in handled} == owner
    statuses = [harness.tenant_row(f"crash-{i}")["billing_status"] for i in range(3)]
    assert statuses == ["active"] * 3


# ---- two runs for the same rows anyway ---------------------------------------------------------


def test_two_runs_for_the_same_rows_apply_each_effect_once(
    harness: Harness,  # noqa: F811 - the imported fixture
) -> None:
    """A batch run twice at once (e.g. a manual re-execution racing the original), then a third
    time afterwards: each row is claimed and handled by exactly one run."""
    rows = queue_rows(harness, tenants=1)

    def resources() -> dict[str, Any]:
        # Each run its own resource objects (and connection pool), as separate processes have;
        # the database is migrated already (Alembic's global context is not thread-safe).
        return {
            "billing_db": BillingDatabase(url=harness.db_url, apply_migrations=False),
            "stripe": StripeResource(
                api_key=API_KEY, api_base=harness.sandbox.url, max_network_retries=0
            ),
        }

    config = {"ops": {"process_webhook_events": {"config": {"row_ids": rows}}}}
    outputs: list[dict[str, int]] = []
    start = threading.Barrier(2)

    def launch() -> None:
        with dg.DagsterInstance.ephemeral() as instance:
            start.wait()
            result = webhook_events_job.execute_in_process(
                run_config=config, resources=resources(), instance=instance
            )
            outputs.append(result.output_for_node("process_webhook_events"))

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outputs) == 2
    handled = sum(o["processed"] + o["ignored"] for o in outputs)
    assert handled == len(rows)  # between them, every row once
    assert sum(o["not_claimed"] for o in outputs) == len(rows)  # and each row refused once
    assert all(o["failed"] == o["dead"] == 0 for o in outputs)

    with dg.DagsterInstance.ephemeral() as instance:
        again = webhook_events_job.execute_in_process(
            run_config=config, resources=resources(), instance=instance
        ).output_for_node("process_webhook_events")
    assert again["not_claimed"] == len(rows) and again["processed"] == again["ignored"] == 0
    attempts = query(harness.db_url, "SELECT attempts, status FROM webhook_events")
    assert {r["attempts"] for r in attempts} == {1}
    assert {r["status"] for r in attempts} <= {"processed", "ignored"}
