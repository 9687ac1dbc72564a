"""The order modules run in: longest first by their recorded seconds, none queued behind another."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from unittest import mock

import pytest

from billing_pipelines_tests.xdist_order import (
    UNRECORDED_SECONDS,
    ModuleSecondsRecorder,
    longest_first,
    read_module_seconds,
    takes_from_the_tail,
    write_module_seconds,
)


def test_a_worker_holding_nothing_gets_the_queues_first_module() -> None:
    assert takes_from_the_tail({}) is False


def test_a_worker_that_has_not_finished_a_test_of_its_module_gets_the_last_module() -> None:
    assert takes_from_the_tail({"e2e/test_browser.py": {"e2e/test_browser.py::test_ui": False}})


def test_a_worker_getting_through_its_module_gets_the_first_module() -> None:
    work = {"m.py": {"m.py::a": True, "m.py::b": False, "m.py::c": False}}
    assert takes_from_the_tail(work) is False


def test_only_unfinished_modules_count() -> None:
    done = {"old.py": {"old.py::a": True, "old.py::b": True}}
    # Everything it held is finished: nothing holds the next module back.
    assert takes_from_the_tail(done) is False
    # A finished module does not make a fresh one look under way.
    assert takes_from_the_tail({**done, "new.py": {"new.py::a": False}}) is True
    assert takes_from_the_tail({**done, "new.py": {"new.py::a": True, "new.py::b": False}}) is False


def test_modules_run_longest_first_by_their_recorded_seconds() -> None:
    seconds = {"short.py": 0.5, "month.py": 170.0, "browser.py": 107.0}
    order = longest_first(["short.py", "browser.py", "month.py", "short.py"], seconds)
    assert order == ["month.py", "browser.py", "short.py"]


def test_an_unrecorded_module_goes_behind_the_long_ones_and_ahead_of_the_short() -> None:
    long, short = UNRECORDED_SECONDS + 1, UNRECORDED_SECONDS - 1
    seconds = {"long.py": long, "short.py": short}
    assert longest_first(["short.py", "new.py", "long.py"], seconds) == [
        "long.py",
        "new.py",
        "short.py",
    ]


def test_modules_of_equal_seconds_keep_their_collected_order() -> None:
    assert longest_first(["b.py", "a.py", "c.py"], {"a.py": 1.0, "b.py": 1.0}) == [
        "c.py",  # unrecorded: UNRECORDED_SECONDS, more than one second
        "b.py",
        "a.py",
    ]


def test_the_record_reads_back_what_was_written_longest_first(tmp_path: Path) -> None:
    path = tmp_path / "seconds.toml"
    write_module_seconds({"a/test_x.py": 1.25, "b/test_y.py": 30.0}, path)
    assert read_module_seconds(path) == {"a/test_x.py": 1.2, "b/test_y.py": 30.0}
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines == ['"b/test_y.py" = 30.0', '"a/test_x.py" = 1.2']
    assert read_module_seconds(tmp_path / "missing.toml") == {}


Phase = Literal["setup", "call", "teardown"]


def _report(nodeid: str, when: Phase, duration: float) -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("m.py", 0, "t"), {}, "passed", None, when, duration=duration)


def test_a_passing_run_adds_up_each_modules_phases_and_keeps_modules_it_did_not_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "seconds.toml"
    write_module_seconds({"old.py": 9.0, "m.py": 100.0}, path)
    recorder = ModuleSecondsRecorder(path)
    phases: list[tuple[str, Phase, float]] = [
        ("m.py::a", "setup", 2.0),
        ("m.py::a", "call", 0.5),
        ("m.py::a", "teardown", 0.25),
        ("m.py::b", "call", 1.0),
        ("n.py::c", "call", 0.3),
    ]
    for nodeid, when, duration in phases:
        recorder.pytest_runtest_logreport(_report(nodeid, when, duration))
    recorder.pytest_sessionfinish(mock.Mock(), exitstatus=0)
    assert read_module_seconds(path) == {"m.py": 3.8, "n.py": 0.3, "old.py": 9.0}


def test_a_failed_run_leaves_the_record_alone(tmp_path: Path) -> None:
    path = tmp_path / "seconds.toml"
    write_module_seconds({"m.py": 100.0}, path)
    recorder = ModuleSecondsRecorder(path)
    recorder.pytest_runtest_logreport(_report("m.py::a", "call", 1.0))
    recorder.pytest_sessionfinish(mock.Mock(), exitstatus=1)
    assert read_module_seconds(path) == {"m.py": 100.0}
