"""Benchmark: loading the Dagster definitions, as a ratio to `import dagster` in the same run.

Reproduce: `python bench/definitions_load.py --runs 7`.

Every code server, sensor-launched run and `billing` command that touches Dagster pays this
load, so it should cost little more than Dagster itself. Each sample is a fresh interpreter
(nothing cached in-process); the two kinds alternate so a change in the machine's load hits both
alike. A sample is the wall time of the child's own work, measured inside it with
`time.perf_counter()` (interpreter start-up is the same for both and is left out):

- baseline: `import dagster`;
- definitions: `from billing_pipelines.definitions import defs; defs()` (the import plus building
  every asset, check, job, sensor, schedule and resource, as `load_from_defs_folder` does).

It also lists the heavy modules the definitions load (they should load where they are used).
The children may write and reuse bytecode (`__pycache__`) as a normal installation does, since
Dagster's own modules come precompiled from their wheel; `--no-bytecode-cache` compiles the
project's modules from source on every load instead (PYTHONDONTWRITEBYTECODE=1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

BASELINE = "import dagster"
DEFINITIONS = "from billing_pipelines.definitions import defs\ndefs()"
# Modules whose import is deferred to the code that uses them.
HEAVY = (
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
)
CHILD = """
import json, sys, time
t = time.perf_counter()
exec(compile({code!r}, "<bench>", "exec"))
took = time.perf_counter() - t
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"seconds": took, "heavy": heavy}}))
"""


def sample(code: str, *, bytecode_cache: bool = True) -> dict[str, object]:
    """One fresh interpreter running `code`; its own timing and the heavy modules it loaded."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not bytecode_cache:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(code=code, heavy=HEAVY)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="samples of each kind (alternating)")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="compile the project's modules from source on every load (PYTHONDONTWRITEBYTECODE)",
    )
    args = parser.parse_args()
    cache = not args.no_bytecode_cache

    # Warm the OS file cache (and the bytecode cache, when allowed) once, for both kinds alike.
    sample(BASELINE, bytecode_cache=cache)
    sample(DEFINITIONS, bytecode_cache=cache)
    baseline: list[float] = []
    definitions: list[float] = []
    heavy: list[str] = []
    for _ in range(args.runs):
        base = sample(BASELINE, bytecode_cache=cache)
        defs = sample(DEFINITIONS, bytecode_cache=cache)
        baseline.append(float(base["seconds"]))  # type: ignore[arg-type]
        definitions.append(float(defs["seconds"]))  # type: ignore[arg-type]
        heavy = list(defs["heavy"])  # type: ignore[call-overload]
    base_median = statistics.median(baseline)
    defs_median = statistics.median(definitions)
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, load {os.getloadavg()}")
    print(
        f"runs: {args.runs} of each, alternating, fresh interpreter each;"
        f" bytecode cache {'on' if cache else 'off'}"
    )
    print(
        f"import dagster:      median {base_median:.2f} s"
        f" (min {min(baseline):.2f}, max {max(baseline):.2f})"
    )
    print(
        f"definitions loaded:  median {defs_median:.2f} s"
        f" (min {min(definitions):.2f}, max {max(definitions):.2f})"
    )
    print(f"ratio (median/median): {defs_median / base_median:.2f}x")
    print(f"heavy modules loaded with the definitions: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
