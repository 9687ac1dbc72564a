"""Every Dagster definition loads, is documented, and validates with the dagster CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from billing_pipelines.definitions import defs

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_and_every_asset_is_documented() -> None:
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert dg.AssetKey("daily_tenant_usage") in keys
    for key in keys:
        description = graph.get(key).description
        assert description and description.strip(), f"{key} has no business docstring"
    assert {"billing_db", "warehouse", "stripe"} <= set(definitions.resources or {})
    assert definitions.resolve_job_def("daily_usage_job").partitions_def is not None
    for admin_job in (
        "onboard_tenant",
        "change_plan",
        "cancel_subscription",
        "update_payment_method",
        "reactivate_tenant",
    ):
        job = definitions.resolve_job_def(admin_job)
        assert job.description, f"{admin_job} needs a description for the launchpad"


def test_dagster_definitions_validate(tmp_path: Path) -> None:
    # From outside the repository: in its root the CLI would read the production dagster.yaml,
    # which needs DAGSTER_POSTGRES_URL.
    dagster = shutil.which("dagster") or str(Path(sys.executable).parent / "dagster")
    result = subprocess.run(
        [dagster, "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


# Python as a production install sees it: the editable installs of the repository (the product
# and the sandbox) switched off, the copied package first on the path.
_AS_INSTALLED = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
sys.path.insert(0, sys.argv.pop(1))
import billing_pipelines
print("loaded from", billing_pipelines.__file__, flush=True)
from dagster._cli import main
main()
"""


def test_an_installed_package_loads_without_the_repository(tmp_path: Path) -> None:
    # What `pip install .` puts in site-packages: the package alone, no pyproject.toml above it,
    # and no sandbox package importable.
    site = tmp_path / "site-packages"
    shutil.copytree(
        ROOT / "billing_pipelines",
        site / "billing_pipelines",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    result = subprocess.run(
        [sys.executable, "-c", _AS_INSTALLED, str(site)]
        + ["definitions", "validate", "-m", "billing_pipelines.definitions"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k not in {"DAGSTER_HOME", "PYTHONPATH"}},
    )
    output = result.stdout + result.stderr
    assert f"loaded from {site}/billing_pipelines/__init__.py" in output
    assert result.returncode == 0, output
    assert "Validation successful" in output


def test_shipped_instance_retries_failed_runs_and_monitors_stuck_ones(
    embedded_services: dict[str, str],
) -> None:
    # A killed queue-consumer run keeps its run_key: without retries and monitoring nothing
    # would ever run that batch again (see RELIABILITY.md).
    instance = dg.DagsterInstance.get()
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_runtime_seconds == 4 * 3600
