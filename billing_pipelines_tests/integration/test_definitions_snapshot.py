"""The loaded code location matches its committed snapshot, so no definition changes unnoticed.

Every asset, asset check, job, sensor, schedule and resource key that Dagster loads (through
`billing_pipelines.definitions.defs`, as the code server does) is written to
`snapshots/definitions.json`. An intended change is recorded by regenerating the file (run this
file with UPDATE_DEFINITIONS_SNAPSHOT=1) and committing it with the change.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import pkgutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

# What dg.define_asset_job and dg.build_schedule_from_partitioned_job return (before the
# definitions are resolved); Dagster does not export these classes.
from dagster._core.definitions.partitions.partitioned_schedule import (
    UnresolvedPartitionedAssetScheduleDefinition,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

import billing_pipelines.defs
from billing_pipelines.definitions import defs
from billing_pipelines.settings import Settings

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE_ENV = "UPDATE_DEFINITIONS_SNAPSHOT"
# Kinds are recorded on their own; Dagster also mirrors each one as a tag.
KIND_TAG_PREFIX = "dagster/kind/"


def _first_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[0].strip() if lines else None


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    return None if partitions_def is None else f"{type(partitions_def).__name__}: {partitions_def}"


def _check_name(key: dg.AssetCheckKey) -> str:
    return f"{key.asset_key.to_user_string()}:{key.name}"


def _metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in metadata.items():
        value = raw.value if isinstance(raw, dg.MetadataValue) else raw
        try:
            json.dumps(value)
        except TypeError:
            value = str(value)
        out[name] = value
    return out


def _assets(definitions: dg.Definitions) -> dict[str, Any]:
    assets: dict[str, Any] = {}
    for spec in definitions.resolve_all_asset_specs():
        entry: dict[str, Any] = {
            "group": spec.group_name,
            "kinds": sorted(spec.kinds),
            "tags": {k: v for k, v in spec.tags.items() if not k.startswith(KIND_TAG_PREFIX)},
            "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
            "partitions": _partitions(spec.partitions_def),
            "description": _first_line(spec.description),
        }
        if spec.owners:
            entry["owners"] = sorted(spec.owners)
        assets[spec.key.to_user_string()] = entry
    return assets


def _asset_checks(definitions: dg.Definitions) -> dict[str, Any]:
    # An AssetCheckSpec carries no severity in Dagster: each evaluation chooses its own.
    graph = definitions.resolve_asset_graph()
    checks: dict[str, Any] = {}
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        checks[_check_name(key)] = {
            "asset": key.asset_key.to_user_string(),
            "name": key.name,
            "blocking": spec.blocking,
            "partitions": _partitions(spec.partitions_def),
            "description": _first_line(spec.description),
            "metadata": _metadata(spec.metadata),
        }
    return checks


def _jobs(definitions: dg.Definitions) -> dict[str, Any]:
    jobs: dict[str, Any] = {}
    for job in definitions.resolve_all_job_defs():
        if job.name.startswith("__"):  # Dagster's implicit all-assets job
            continue
        layer = job.asset_layer
        entry: dict[str, Any] = {
            "partitions": _partitions(job.partitions_def),
            "tags": dict(job.tags),
        }
        if layer.executable_asset_keys:
            entry["assets"] = sorted(k.to_user_string() for k in layer.executable_asset_keys)
            entry["asset_checks"] = sorted(
                _check_name(k) for k in layer.asset_graph.asset_check_keys
            )
        else:
            entry["ops"] = sorted(node.name for node in job.nodes)
        jobs[job.name] = entry
    return jobs


def _sensors(repository: dg.RepositoryDefinition) -> dict[str, Any]:
    return {
        sensor.name: {
            "type": type(sensor).__name__,
            "jobs": sorted(target.job_name for target in sensor.targets),
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "default_status": sensor.default_status.value,
        }
        for sensor in repository.sensor_defs
    }


def _schedules(repository: dg.RepositoryDefinition) -> dict[str, Any]:
    return {
        schedule.name: {
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "job": schedule.job_name,
            "default_status": schedule.default_status.value,
        }
        for schedule in repository.schedule_defs
    }


def snapshot(definitions: dg.Definitions) -> dict[str, Any]:
    """What the code location offers, in a form that reads well in a diff."""
    repository = definitions.get_repository_def()
    return {
        "assets": _assets(definitions),
        "asset_checks": _asset_checks(definitions),
        "jobs": _jobs(definitions),
        "sensors": _sensors(repository),
        "schedules": _schedules(repository),
        "resources": sorted(definitions.resources or {}),
    }


@pytest.fixture
def shipped_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings at their shipped defaults: some definitions (the freshness deadline) read them."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.mark.usefixtures("shipped_settings")
def test_loaded_definitions_match_the_committed_snapshot() -> None:
    current = json.dumps(snapshot(defs()), indent=2, sort_keys=True) + "\n"
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(current)
        pytest.skip(f"{SNAPSHOT.name} regenerated: review the diff and commit it")
    assert SNAPSHOT.exists(), f"no snapshot yet: run with {UPDATE_ENV}=1 and commit it"
    committed = SNAPSHOT.read_text()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            current.splitlines(keepends=True),
            fromfile="committed snapshot",
            tofile="loaded definitions",
        )
    )
    assert current == committed, (
        f"the loaded definitions differ from {SNAPSHOT.name}; if intended, rerun with "
        f"{UPDATE_ENV}=1 and commit the new snapshot:\n{diff}"
    )


def _defs_modules() -> Iterator[Any]:
    package = billing_pipelines.defs
    yield package
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        yield importlib.import_module(info.name)


def _declared_in_modules() -> dict[str, set[str]]:
    """Every asset, check, sensor, schedule and job object that a module under defs/ holds."""
    declared: dict[str, set[str]] = {
        "assets": set(),
        "asset_checks": set(),
        "jobs": set(),
        "sensors": set(),
        "schedules": set(),
    }
    for module in _defs_modules():
        for value in vars(module).values():
            if isinstance(value, dg.AssetChecksDefinition):
                declared["asset_checks"].update(_check_name(k) for k in value.check_keys)
            elif isinstance(value, dg.AssetsDefinition):
                declared["assets"].update(k.to_user_string() for k in value.keys)
                declared["asset_checks"].update(_check_name(k) for k in value.check_keys)
            elif isinstance(value, dg.SensorDefinition):
                declared["sensors"].add(value.name)
            elif isinstance(
                value, dg.ScheduleDefinition | UnresolvedPartitionedAssetScheduleDefinition
            ):
                declared["schedules"].add(value.name)
            elif isinstance(value, dg.JobDefinition | UnresolvedAssetJobDefinition):
                declared["jobs"].add(value.name)
    return declared


@pytest.mark.usefixtures("shipped_settings")
def test_every_asset_check_sensor_schedule_and_job_declared_under_defs_is_loaded() -> None:
    # A module that also holds a @dg.definitions function contributes only that function's
    # definitions: anything else declared beside it would be silently dropped.
    declared = _declared_in_modules()
    assert all(declared.values()), f"the module walk found nothing for some kind: {declared}"
    loaded = snapshot(defs())
    missing = {kind: sorted(names - set(loaded[kind])) for kind, names in declared.items()}
    assert not any(missing.values()), f"declared under defs/ but not loaded: {missing}"
