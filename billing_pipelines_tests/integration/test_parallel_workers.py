"""The suite's parallel run (`make test`): a long module never waits behind another one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from billing_pipelines_tests.xdist_order import read_module_seconds

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


def _inner_pytest(
    tmp_path: Path, tests: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """A pytest run of `tests` with the suite's ordering plugin, as `make test` runs the suite."""
    # The inner run keeps its temporary folders to itself: pytest makes the shared
    # `pytest-of-<user>` folder private (0700) when it starts, which would lock the embedded
    # PostgreSQL servers of this run's workers (another user) out of their data directories.
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "billing_pipelines_tests.xdist_order",
            "--dist",
            "loadfile",
            "--no-loadscope-reorder",
            "--basetemp",
            str(tmp_path / "basetemp"),
            *args,
            str(tests),
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            **env,
            "TMPDIR": str(tmp_path / "tmp"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_long_one_test_module_does_not_hold_back_the_next_long_module(tmp_path: Path) -> None:
    tests, signals = tmp_path / "tests", tmp_path / "signals"
    tests.mkdir()
    signals.mkdir()
    # Run in this order, longest first: none is in the suite's record, so none moves.
    for name, text in {
        "test_a_long.py": FIRST,
        "test_b_long.py": SECOND,
        "test_c_long.py": THIRD,
        "test_d_short.py": SHORT,
        "test_e_short.py": SHORT,
    }.items():
        (tests / name).write_text(text)
    run = _inner_pytest(tmp_path, tests, {"ORDER_SIGNALS": str(signals)}, "-n", "2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "8 passed" in run.stdout, run.stdout[-3000:]
    # The two long modules ran side by side, on different workers.
    assert (signals / "a").read_text() != (signals / "c").read_text()


# Each test notes its module in the order tests ran; one takes a measurable while.
NOTES = """
import os, pathlib, time

def test_notes_its_module():
    with pathlib.Path(os.environ["ORDER_NOTES"]).open("a") as notes:
        notes.write(__name__ + "\\n")
    time.sleep(float(os.environ.get("SLEEP_" + __name__, "0")))
"""


def test_modules_run_in_the_recorded_order_and_a_run_records_each_modules_seconds(
    tmp_path: Path,
) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    for name in ("test_first_collected", "test_second_collected", "test_unrecorded"):
        (tests / f"{name}.py").write_text(NOTES)
    given, recorded, notes = tmp_path / "given.toml", tmp_path / "recorded.toml", tmp_path / "n"
    # The second collected module is the long one in the record; the first is short; the
    # unrecorded one goes between them.
    given.write_text(
        '"tests/test_second_collected.py" = 300.0\n"tests/test_first_collected.py" = 0.5\n'
    )
    # A module this run does not collect keeps its line in the record it writes.
    recorded.write_text('"tests/test_elsewhere.py" = 7.0\n')
    env = {"ORDER_NOTES": str(notes), "SLEEP_test_first_collected": "0.6"}
    run = _inner_pytest(
        tmp_path,
        tests,
        env,
        "-n",
        "2",
        f"--module-seconds={given}",
        f"--record-module-seconds={recorded}",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    seconds = read_module_seconds(recorded)
    assert set(seconds) == {
        "tests/test_first_collected.py",
        "tests/test_second_collected.py",
        "tests/test_unrecorded.py",
        "tests/test_elsewhere.py",
    }
    # Set-up, call and tear-down, added up on the controller from both workers' reports.
    assert seconds["tests/test_first_collected.py"] >= 0.6
    assert seconds["tests/test_elsewhere.py"] == 7.0
    # On one worker the order is plain to see: longest recorded first.
    notes.unlink()
    run = _inner_pytest(tmp_path, tests, env, "-n", "0", f"--module-seconds={given}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert notes.read_text().split() == [
        "test_second_collected",
        "test_unrecorded",
        "test_first_collected",
    ]
