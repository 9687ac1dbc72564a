"""The simulated month's independent work (each tenant's onboarding) runs a few at a time."""

from __future__ import annotations

import threading

import pytest
from billing_sandbox.parallel import each_in_threads


def test_items_run_up_to_the_worker_count_at_once_and_results_keep_the_items_order() -> None:
    # Every item waits for two others to arrive: three workers get through, one would not.
    barrier = threading.Barrier(3, timeout=10)
    seen: list[str] = []

    def work(item: int) -> str:
        barrier.wait()
        seen.append(threading.current_thread().name)
        return f"tenant-{item:02d}"

    results = each_in_threads([5, 3, 9, 1, 7, 2], work, workers=3)
    assert results == ["tenant-05", "tenant-03", "tenant-09", "tenant-01", "tenant-07", "tenant-02"]
    assert len(set(seen)) == 3


def test_one_worker_runs_the_items_one_after_another_in_the_caller() -> None:
    caller = threading.current_thread().name
    names = each_in_threads(["b", "a"], lambda item: (item, threading.current_thread().name), 1)
    assert names == [("b", caller), ("a", caller)]


def test_an_error_in_one_item_is_raised_with_no_item_left_running() -> None:
    lock = threading.Lock()
    running = {"now": 0}
    done: list[int] = []

    def work(item: int) -> int:
        with lock:
            running["now"] += 1
        try:
            if item == 2:
                raise RuntimeError("tenant 2 refused")
            done.append(item)
            return item
        finally:
            with lock:
                running["now"] -= 1

    with pytest.raises(RuntimeError, match="tenant 2 refused"):
        each_in_threads([1, 2, 3, 4, 5, 6], work, workers=2)
    assert running["now"] == 0
    assert 1 in done and 2 not in done


def test_no_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        each_in_threads([1], lambda item: item, 0)
