"""Which module a parallel worker is handed next: the queue's first, or its last (a short one)."""

from __future__ import annotations

from billing_pipelines_tests.xdist_order import takes_from_the_tail


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
