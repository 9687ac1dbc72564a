"""Loading the Dagster definitions does not import the heavy libraries the code uses at run time.

Every code server, sensor-launched run and `billing` command that touches Dagster loads the
definitions; the Stripe SDK, the database and warehouse drivers, the migration tool, the data
frame and template libraries are imported where they are used, not when the definitions load.
"""

from __future__ import annotations

import json
import subprocess
import sys

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

CHILD = """
import json, sys
from billing_pipelines.definitions import defs
loaded = defs()
print(json.dumps({
    "assets": len(list(loaded.resolve_all_asset_keys())),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in %r),
}))
"""


def _load_in_fresh_interpreter(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=240
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_loading_the_definitions_imports_none_of_the_deferred_modules() -> None:
    result = _load_in_fresh_interpreter(CHILD % (DEFERRED,))
    # The definitions really loaded (an empty Definitions would import nothing either).
    assert isinstance(result["assets"], int) and result["assets"] > 10
    assert result["modules"] == []


def test_the_check_sees_a_deferred_module_when_one_is_imported() -> None:
    """The child's report is not blind: a module imported next to the definitions shows up."""
    code = CHILD.replace("loaded = defs()", "import psycopg\nloaded = defs()")
    result = _load_in_fresh_interpreter(code % (DEFERRED,))
    assert "psycopg" in result["modules"]  # type: ignore[operator]
