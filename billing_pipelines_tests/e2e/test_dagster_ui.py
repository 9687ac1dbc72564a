"""The Dagster UI is the admin surface: the real webserver serves our code location and runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from billing_sandbox.services import free_port

from billing_pipelines.definitions import defs
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.runs import materialize_days

ROOT = Path(__file__).resolve().parents[2]

LOCATION_QUERY = """
{
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on RepositoryLocation {
            repositories {
              assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks {
                checks { name } } } }
              jobs { name }
              sensors { name }
              schedules { name }
            }
          }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

RUNS_QUERY = """
{
  runsOrError(filter: {pipelineName: "daily_usage_job"}, limit: 20) {
    ... on Runs { results { runId status tags { key value }
      repositoryOrigin { repositoryLocationName repositoryName } } }
  }
}
"""


def _graphql(url: str, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body: dict[str, Any] = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


# One webserver for the module's tests: each query reads the instance's runs and instigator
# states afresh, so the tests need no server of their own (a start loads Dagster and the
# definitions twice, in the server and in its code server).
@pytest.fixture(scope="module")
def webserver(embedded_services: dict[str, str]) -> Iterator[str]:
    """dagster-webserver on the same Postgres-backed instance the CLI and demo use."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster-webserver")),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("dagster-webserver did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # A loaded machine can take longer to stop it; its code server stops by itself
            # once the heartbeats end.
            server.kill()
            server.wait(timeout=30)


def test_ui_serves_every_definition_and_the_runs(
    webserver: str, embedded_services: dict[str, str]
) -> None:
    # A run made the way the demo and the CLI make them, on the shared instance.
    warehouse.ensure_usage_schema(warehouse.connect(embedded_services["CLICKHOUSE_URL"]))
    (ran,) = list(materialize_days("daily_usage_job", date(2026, 6, 1), date(2026, 6, 1)))
    assert ran[1]

    (entry,) = _graphql(webserver, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    (repo,) = location["repositories"]

    definitions = defs()
    graph = definitions.resolve_asset_graph()
    expected_assets = {"/".join(k.path) for k in graph.get_all_asset_keys()}
    served_assets = {"/".join(n["assetKey"]["path"]) for n in repo["assetNodes"]}
    assert expected_assets <= served_assets

    expected_checks = {k.name for k in graph.asset_check_keys}
    served_checks = {
        c["name"]
        for n in repo["assetNodes"]
        for c in (n["assetChecksOrError"] or {}).get("checks", [])
    }
    assert expected_checks <= served_checks

    expected_sensors = {s.name for s in definitions.sensors or []}
    assert expected_sensors <= {s["name"] for s in repo["sensors"]}
    served_jobs = {j["name"] for j in repo["jobs"]}
    assert {"daily_usage_job", "onboard_tenant", "change_plan"} <= served_jobs

    runs = _graphql(webserver, RUNS_QUERY)["runsOrError"]["results"]
    partitions = {t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"}
    assert "2026-06-01" in partitions
    assert any(r["status"] == "SUCCESS" for r in runs)
    # Launched with the code location's origin: the UI files the run under the location it
    # serves (Overview timeline, re-execution without a warning), not as an orphan.
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        if tags.get("dagster/partition") != "2026-06-01":
            continue
        assert (run["repositoryOrigin"] or {}).get("repositoryLocationName") == entry["name"]
        assert tags.get("dagster/code_location") == entry["name"]


INSTIGATORS_QUERY = """
{
  workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
    ... on RepositoryLocation { repositories {
      sensors { name sensorState { status } }
      schedules { name scheduleState { status } }
    } } } } } }
}
"""


def _instigator_status(url: str) -> dict[str, str]:
    (entry,) = _graphql(url, INSTIGATORS_QUERY)["workspaceOrError"]["locationEntries"]
    (repo,) = entry["locationOrLoadError"]["repositories"]
    status = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    status.update({s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]})
    return status


def test_the_sandbox_instance_shows_schedules_and_stripe_sensors_stopped(webserver: str) -> None:
    import dagster as dg
    from billing_sandbox import instigators

    instance = dg.DagsterInstance.get()
    before = _instigator_status(webserver)
    assert before["usage_to_stripe_daily"] == "RUNNING"  # the production default
    stopped = instigators.stop_stripe_dependent(instance)
    try:
        after = _instigator_status(webserver)
        schedules = {s.name for s in defs().get_repository_def().schedule_defs}
        assert schedules and schedules <= set(stopped)
        for name in stopped:
            assert after[name] == "STOPPED", (name, after[name])
        # Alerts keep running: the demo's failed checks still reach the operator.
        assert after["failed_run_alert_sensor"] == "RUNNING"
        assert after["failed_check_alert_sensor"] == "RUNNING"
        assert instigators.stop_stripe_dependent(instance) == stopped  # idempotent
    finally:
        # This session's other tests expect the production defaults back.
        for state in instance.all_instigator_state():
            if state.instigator_name in stopped:
                instance.delete_instigator_state(state.instigator_origin_id, state.selector_id)
    assert _instigator_status(webserver) == before
