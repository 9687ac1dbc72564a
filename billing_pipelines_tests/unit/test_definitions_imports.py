"""Loading the Dagster definitions does not import the heavy libraries the code uses at run time.

Every code server, sensor-launched run and `billing` command that touches Dagster loads the
definitions; the Stripe SDK, the database and warehouse drivers, the migration tool, the data
frame and template libraries are imported where they are used, not when the definitions load.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Each is imported by code that runs inside an op, a sensor tick or a resource's setup.
DEFERRED = (
    "stripe",
    "pandas",
    "pandera",
    "psycopg",
    "psycopg_pool",
    "clickhouse_connect",
    "alembic",
    "sqlalchemy",
    "jinja2",
    "httpx",
    "email_validator",
    "pyrate_limiter",
)

# One fresh interpreter for both tests (each start loads Dagster and the definitions): it
# reports the deferred modules loaded by the definitions, then imports one of them itself and
# reports again, so the second report shows the check is not blind.
CHILD = """
import json, sys
from billing_pipelines.definitions import defs

def report(loaded):
    print(json.dumps({
        "assets": len(list(loaded.resolve_all_asset_keys())),
        "modules": sorted(m for m in sys.modules if m.split(".")[0] in %r),
    }))

loaded = defs()
report(loaded)
import psycopg
report(loaded)
"""


@pytest.fixture(scope="module")
def reports() -> list[dict[str, object]]:
    """The child's two reports: after loading the definitions, then after importing psycopg."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD % (DEFERRED,)],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = out.stdout.strip().splitlines()[-2:]
    return [json.loads(line) for line in lines]


def test_loading_the_definitions_imports_none_of_the_deferred_modules(
    reports: list[dict[str, object]],
) -> None:
    result = reports[0]
    # The definitions really loaded (an empty Definitions would import nothing either).
    assert isinstance(result["assets"], int) and result["assets"] > 10
    assert result["modules"] == []


def test_the_check_sees_a_deferred_module_when_one_is_imported(
    reports: list[dict[str, object]],
) -> None:
    """The child's report is not blind: a module imported next to the definitions shows up."""
    assert "psycopg" in reports[1]["modules"]  # type: ignore[operator]
