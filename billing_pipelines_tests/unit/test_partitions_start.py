"""Daily partitions start on the first usage day (USAGE_START_DATE), read when the code loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Loads the code location in a fresh interpreter (partitions are built at import) and prints
# the first and last partition key of the daily job as Dagster serves it.
PROBE = (
    "import dagster as dg\n"
    "from billing_pipelines.definitions import defs\n"
    "job = defs().resolve_job_def('usage_to_stripe_job')\n"
    "keys = job.partitions_def.get_partition_keys()\n"
    "print(keys[0], len(keys))\n"
)


def probe(start: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "USAGE_START_DATE"}
    if start is not None:
        env["USAGE_START_DATE"] = start
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("start", ["2026-09-14", "2025-12-31"])
def test_partitions_start_on_the_first_usage_day(start: str) -> None:
    done = probe(start)
    assert done.returncode == 0, done.stderr
    first, _count = done.stdout.split()
    assert first == start


def test_default_start_and_a_bad_value_is_one_line() -> None:
    default = probe(None)
    assert default.returncode == 0, default.stderr
    assert default.stdout.split()[0] == "2026-01-01"
    bad = probe("14/09/2026")
    assert bad.returncode != 0
    assert "USAGE_START_DATE is invalid" in bad.stderr
