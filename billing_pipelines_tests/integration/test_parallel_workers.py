"""The suite's parallel run (`make test`): a long module never waits behind another one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A one-test module that holds its worker until the next long module has started somewhere:
# if that module were queued behind it on the same worker, it would wait in vain.
FIRST = """
import os, pathlib, time

def test_holds_its_worker_until_the_next_long_module_runs():
    signals = pathlib.Path(os.environ["ORDER_SIGNALS"])
    (signals / "a").write_text(os.environ["PYTEST_XDIST_WORKER"])
    deadline = time.monotonic() + 180
    while not (signals / "c").exists():
        assert time.monotonic() < deadline, "the next long module never started"
        time.sleep(0.05)
"""
# A module of several tests, and the next long one (it says where it ran).
SECOND = "\n".join(f"def test_{i}():\n    pass\n" for i in range(3))
THIRD = """
import os, pathlib

def test_says_where_it_runs():
    signals = pathlib.Path(os.environ["ORDER_SIGNALS"])
    (signals / "c").write_text(os.environ["PYTEST_XDIST_WORKER"])

def test_second():
    pass
"""
SHORT = "def test_short():\n    pass\n"


def test_a_long_one_test_module_does_not_hold_back_the_next_long_module(tmp_path: Path) -> None:
    tests, signals = tmp_path / "tests", tmp_path / "signals"
    tests.mkdir()
    signals.mkdir()
    # Collected in this order (the suite's conftest puts its long modules first the same way).
    for name, text in {
        "test_a_long.py": FIRST,
        "test_b_long.py": SECOND,
        "test_c_long.py": THIRD,
        "test_d_short.py": SHORT,
        "test_e_short.py": SHORT,
    }.items():
        (tests / name).write_text(text)
    # The inner run keeps its temporary folders to itself: pytest makes the shared
    # `pytest-of-<user>` folder private (0700) when it starts, which would lock the embedded
    # PostgreSQL servers of this run's workers (another user) out of their data directories.
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "ORDER_SIGNALS": str(signals),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "billing_pipelines_tests.xdist_order",
            # As `make test` runs the suite, on two workers.
            "-n",
            "2",
            "--dist",
            "loadfile",
            "--no-loadscope-reorder",
            "--basetemp",
            str(tmp_path / "basetemp"),
            str(tests),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "8 passed" in run.stdout, run.stdout[-3000:]
    # The two long modules ran side by side, on different workers.
    assert (signals / "a").read_text() != (signals / "c").read_text()
