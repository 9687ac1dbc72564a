"""Reads started ahead in threads: each key read once, before it is asked; errors where asked."""

from __future__ import annotations

import threading

import pytest

from billing_pipelines.lib.reconciliation.read_ahead import ReadAhead


def test_every_key_is_read_once_and_ahead_of_the_caller_asking() -> None:
    started: dict[str, threading.Event] = {k: threading.Event() for k in ("c", "a", "b", "z")}
    calls: list[str] = []
    lock = threading.Lock()

    def read(key: str) -> str:
        with lock:
            calls.append(key)
        started[key].set()
        return key.upper() * 2

    with ReadAhead(read, ["c", "a", "c", "b", "a"], workers=2) as ahead:
        # Every read begins without the caller asking for any answer (it is busy elsewhere).
        for key in ("a", "b", "c"):
            assert started[key].wait(10), f"{key} was not read ahead"
        assert not started["z"].is_set()
        assert ahead.get("a") == "AA"
        assert ahead.get("b") == "BB"
        assert ahead.get("a") == "AA"
        assert ahead.get("c") == "CC"
        # A key that was not given is read when asked for, once.
        assert ahead.get("z") == "ZZ" and ahead.get("z") == "ZZ"
    assert sorted(calls) == ["a", "b", "c", "z"]


def test_a_failed_read_raises_where_its_key_is_asked_for_and_the_others_still_answer() -> None:
    def read(key: int) -> int:
        if key == 3:
            raise LookupError(f"no meter for {key}")
        return key * 10

    with ReadAhead(read, range(6), workers=3) as ahead:
        assert [ahead.get(k) for k in (5, 0, 1)] == [50, 0, 10]
        with pytest.raises(LookupError, match="no meter for 3"):
            ahead.get(3)
        assert ahead.get(4) == 40


def test_closing_drops_the_reads_not_yet_started_and_waits_for_the_running_one() -> None:
    gate, running = threading.Event(), threading.Event()
    calls: list[int] = []

    def read(key: int) -> int:
        calls.append(key)
        if key == 1:
            running.set()
            gate.wait(10)  # still running when the reader is closed
        return key

    ahead = ReadAhead(read, range(50), workers=1)
    assert ahead.get(0) == 0
    assert running.wait(10)
    closing = threading.Thread(target=ahead.close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()  # waiting for the running read
    gate.set()
    closing.join(10)
    assert not closing.is_alive()
    assert calls == [0, 1]
